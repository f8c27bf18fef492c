"""``python -m scalerec_collector``: run the collector alone."""

from scalerec_core.service import serve

from scalerec_collector.config import get_settings
from scalerec_collector.main import create_app


def main() -> None:
    settings = get_settings()
    serve(create_app(settings), settings.host, settings.port, settings.log_level)


if __name__ == "__main__":
    main()
