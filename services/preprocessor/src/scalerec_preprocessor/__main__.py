"""``python -m scalerec_preprocessor``: run the preprocessor alone."""

from scalerec_core.service import configured, serve_service

from scalerec_preprocessor.config import get_settings


def main() -> None:
    serve_service("scalerec_preprocessor.main:create_app", configured("preprocessor", get_settings))


if __name__ == "__main__":
    main()
