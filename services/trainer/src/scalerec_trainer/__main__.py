"""``python -m scalerec_trainer``: run the trainer alone."""

from scalerec_core.service import serve

from scalerec_trainer.config import get_settings
from scalerec_trainer.main import create_app


def main() -> None:
    settings = get_settings()
    serve(
        create_app(settings), settings.host, settings.port, settings.log_level, keep_alive_s=settings.http_keep_alive_s
    )


if __name__ == "__main__":
    main()
