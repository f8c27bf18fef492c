"""``python -m scalerec_ranker``: run the ranker alone, in ``WORKERS`` processes (default: one per CPU)."""

from scalerec_core.service import available_cpus, serve

from scalerec_ranker.config import get_settings


def main() -> None:
    settings = get_settings()
    workers = settings.workers or available_cpus()
    if workers > 1:
        # Each worker imports the factory and builds its own app: settings come from the same environment.
        serve(
            "scalerec_ranker.main:create_app",
            settings.host,
            settings.port,
            settings.log_level,
            workers,
            settings.http_keep_alive_s,
        )
    else:
        from scalerec_ranker.main import create_app

        serve(
            create_app(settings),
            settings.host,
            settings.port,
            settings.log_level,
            keep_alive_s=settings.http_keep_alive_s,
        )


if __name__ == "__main__":
    main()
