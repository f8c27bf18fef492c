"""``python -m scalerec_collector``: run the collector alone, in ``WORKERS`` processes."""

from scalerec_core.service import available_cpus, configured, serve_service

from scalerec_collector.config import get_settings


def main() -> None:
    settings = configured("collector", get_settings)
    serve_service("scalerec_collector.main:create_app", settings, settings.workers or available_cpus())


if __name__ == "__main__":
    main()
