"""``python -m scalerec_evaluator``: run the evaluator alone."""

from scalerec_core.service import serve

from scalerec_evaluator.config import get_settings
from scalerec_evaluator.main import create_app


def main() -> None:
    settings = get_settings()
    serve(
        create_app(settings), settings.host, settings.port, settings.log_level, keep_alive_s=settings.http_keep_alive_s
    )


if __name__ == "__main__":
    main()
