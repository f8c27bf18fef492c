"""``python -m scalerec_trainer``: run the trainer alone."""

from scalerec_core.service import configured, serve_service

from scalerec_trainer.config import get_settings


def main() -> None:
    serve_service("scalerec_trainer.main:create_app", configured("trainer", get_settings))


if __name__ == "__main__":
    main()
