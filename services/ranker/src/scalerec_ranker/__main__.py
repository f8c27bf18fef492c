"""``python -m scalerec_ranker``: run the ranker alone, in ``WORKERS`` processes (default: one per CPU)."""

from scalerec_core.service import available_cpus, configured, serve_service

from scalerec_ranker.config import get_settings


def main() -> None:
    settings = configured("ranker", get_settings)
    serve_service("scalerec_ranker.main:create_app", settings, settings.workers or available_cpus())


if __name__ == "__main__":
    main()
