"""``python -m scalerec_evaluator``: run the evaluator alone."""

from scalerec_core.service import configured, serve_service

from scalerec_evaluator.config import get_settings


def main() -> None:
    serve_service("scalerec_evaluator.main:create_app", configured("evaluator", get_settings))


if __name__ == "__main__":
    main()
