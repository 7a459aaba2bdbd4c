"""The ``nominal`` command: serve, migrate, build backbones, evaluate."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from app.detector.config import AUGMENTATIONS, PRECISIONS, RESIZE_POLICIES
from app.detector.presets import DEFAULT_PRESET, PRESET_NAMES

log = logging.getLogger("app.cli")


def _build_backbones(args: argparse.Namespace) -> int:
    from app.detector.backbones import REGISTRY, backbone_path

    names = args.names or list(REGISTRY)
    for name in names:
        path = backbone_path(name, Path(args.models_dir))
        print(f"{name}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _prepare_database(database_url: str, wait_s: float) -> bool:
    """Wait up to ``wait_s`` for the database, then migrate it to head; False (logged) when
    either fails."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.db.migrate import upgrade_to_head, wait_for_database

    try:
        if wait_s > 0:
            wait_for_database(database_url, wait_s)
        upgrade_to_head(database_url)
    except (TimeoutError, SQLAlchemyError, RuntimeError) as exc:
        log.error("migration failed: %s", exc)
        return False
    log.info("database schema at head")
    return True


def _migrate(args: argparse.Namespace) -> int:
    from app.logs import configure_logging
    from app.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    return 0 if _prepare_database(settings.database_url, args.wait) else 1


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.logs import configure_logging
    from app.main import create_app
    from app.settings import get_settings

    settings = get_settings()
    # Before the migration, so Alembic's lines come out in the service's format and level.
    configure_logging(settings.log_level, settings.log_format)
    if args.migrate and not _prepare_database(settings.database_url, args.wait):
        return 1
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,  # ObservabilityMiddleware logs one structured line per request
        proxy_headers=True,
        timeout_graceful_shutdown=10,
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from app.evaluation import run_evaluation_command

    return run_evaluation_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nominal", description="Nominal: few-shot visual anomaly inspection service.")
    sub = parser.add_subparsers(dest="command", required=True)

    wait = argparse.ArgumentParser(add_help=False)
    wait.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                      help="wait up to this long for the database to answer first")

    serve = sub.add_parser("serve", parents=[wait],
                           help="migrate the database and serve the HTTP API")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--no-migrate", dest="migrate", action="store_false",
                       help="serve the schema as it is (someone else migrates)")
    serve.set_defaults(func=_serve)

    migrate = sub.add_parser("migrate", parents=[wait],
                             help="bring the database schema to the newest revision")
    migrate.set_defaults(func=_migrate)

    build = sub.add_parser("build-backbones", help="build the backbone ONNX files under models/")
    build.add_argument("names", nargs="*", help="backbones to build (default: all)")
    build.add_argument("--models-dir", default="models")
    build.set_defaults(func=_build_backbones)

    evaluate = sub.add_parser("evaluate", help="few-shot evaluation on an MVTec-AD-layout folder")
    evaluate.add_argument("dataset", type=Path, help="folder with train/good and test/<label>")
    evaluate.add_argument(
        "--shots",
        default="1,2,4,8,16",
        help="comma-separated k values; 'all' uses every training image",
    )
    evaluate.add_argument("--seeds", type=int, default=3, help="random draws of the k images")
    evaluate.add_argument("--preset", default=None, choices=PRESET_NAMES,
                          help=f"a named configuration (default {DEFAULT_PRESET}); the options "
                          "below win over its settings")
    evaluate.add_argument("--backbone", default=None, help="registry name (default: the preset's)")
    evaluate.add_argument("--resolution", type=int, default=None, help="shorter side in px")
    # Choices from the detector's declarations; omitted options take the detector's defaults.
    evaluate.add_argument("--resize", default=None, choices=RESIZE_POLICIES)
    evaluate.add_argument("--augment", default=None, choices=AUGMENTATIONS)
    evaluate.add_argument("--precision", default=None, choices=PRECISIONS)
    evaluate.add_argument("--coreset-ratio", type=float, default=None)
    evaluate.add_argument(
        "--set", dest="settings", action="append", default=[], metavar="NAME=VALUE",
        help="any detector setting (as in a variant's settings), e.g. --set variation_views=4; "
        "repeatable; wins over the options above")
    evaluate.add_argument(
        "--target-frr",
        type=float,
        default=None,
        help="target false-reject rate for the calibrated threshold",
    )
    evaluate.add_argument(
        "--max-test",
        type=int,
        default=None,
        help="score at most this many test images (default: the whole split)",
    )
    evaluate.add_argument("--report", type=Path, default=None, metavar="DIR",
                          help="write a self-contained HTML report (DIR/index.html)")
    evaluate.add_argument("--worst", type=int, default=4,
                          help="worst false rejects and missed defects shown in the report")
    evaluate.add_argument(
        "--perturb", action="store_true",
        help="also score good and defect test images under the allowed variations (shift, "
             "rotation, light, JPEG, blur) at the largest k, fitted on central windows")
    evaluate.add_argument("--views-per-image", type=int, default=5,
                          help="perturbed views per image for the random variations")
    evaluate.add_argument("--models-dir", default="models")
    evaluate.add_argument("--threads", type=int, default=2)
    evaluate.add_argument("--json", type=Path, default=None, help="write results here")
    evaluate.set_defaults(func=_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    from app.settings import SettingsError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print_settings_error(exc)
        return 2


def print_settings_error(exc: Exception) -> None:
    """The problems of invalid settings on stderr, one a line (no traceback, no secrets)."""
    problems = getattr(exc, "problems", [str(exc)])
    print("nominal: invalid settings (NOMINAL_* environment variables):", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
