"""``scalerec``: the platform's command line."""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scalerec", description="ScaleRec command line")
    sub = parser.add_subparsers(dest="command", required=True)
    from scalerec_cli import demo, serve
    from scalerec_cli.report import command as report

    demo.add_parser(sub)
    report.add_parser(sub)
    serve.add_parser(sub)
    try:
        from scalerec_cli import eval_dataset
    except ImportError as exc:  # torch missing: the rest of the CLI still works
        logging.getLogger(__name__).debug("eval-dataset unavailable: %s", exc)
    else:
        eval_dataset.add_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
