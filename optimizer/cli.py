"""`costopt` command line. User mistakes: one line on stderr, exit 2. Bugs: traceback, exit 1."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from cost.errors import CostInputError
from optimizer.cli_format import chain_text, table
from optimizer.errors import EXIT_NOTHING_MET, EXIT_USER_ERROR, UserError
from optimizer.formatting import SERVING_COLUMN, drop_text, num, ratio_text, serving_cell, serving_text
from optimizer.result_text import render_result
from optimizer.results import json_default
from optimizer.signals import Stopped, stop_on_signals

JSON_HELP = "print one JSON object on stdout (the usual text goes to stderr)"


# ----------------------------------------------------------------------------- commands
def cmd_validate(args: argparse.Namespace) -> int:
    from optimizer.passes import check_chain, check_space
    from optimizer.ranges import Choice
    from optimizer.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    if any(isinstance(p.enabled, Choice) for p in recipe.passes):
        check_space([(p.name, isinstance(p.enabled, Choice)) for p in recipe.passes if p.enabled is not False])
    else:
        check_chain([{"name": p.name} for p in recipe.passes if p.enabled is not False])
    kind = "a search space" if recipe.has_ranges() else "a single run"
    args.result = {"recipe": args.recipe, "valid": True, "task": recipe.task, "passes": len(recipe.passes), "kind": kind}
    print(f"{args.recipe}: valid ({recipe.task}, {len(recipe.passes)} passes, {kind})")
    return 0


def _tracker(args: argparse.Namespace, experiment: str) -> Any:
    """The MLflow tracker --mlflow asks for (checked before any work), or None."""
    if args.mlflow is None:
        return None
    from optimizer.tracking import MlflowTracker

    return MlflowTracker(args.mlflow, experiment)


def cmd_run(args: argparse.Namespace) -> int:
    from optimizer.recipe import load_recipe
    from optimizer.run_record import run_recipe

    recipe = load_recipe(args.recipe, args.set)
    tracker = _tracker(args, recipe.name)
    result, path = run_recipe(recipe, Path(args.out) if args.out else None, progress=not _quiet(args))
    args.result = result | {"result_file": str(path)}
    if tracker is not None:
        args.result["mlflow_run"] = tracker.log_result(result)
    print(render_result(result))
    print(f"\nresult: {path}")
    return EXIT_NOTHING_MET if result["status"] == "broken" else 0


def cmd_search(args: argparse.Namespace) -> int:
    from optimizer.confirm import summary_lines
    from optimizer.measurement import Measurement
    from optimizer.outcome import conclude, time_budget
    from optimizer.recipe import load_recipe
    from optimizer.study import leaderboard, run_search
    from optimizer.trial_runner import worker_id
    from optimizer.trials import WORKER_PREFIX

    minutes = [f"search.time_budget_minutes={args.minutes}"] if args.minutes is not None else []
    recipe = load_recipe(args.recipe, [*args.set, *minutes])
    clock = time_budget(recipe)  # started before the baseline: it covers the whole command
    tracker = _tracker(args, recipe.name)
    study = run_search(
        recipe, args.storage, args.trials, progress=not _quiet(args), callbacks=[tracker] if tracker else [], budget=clock
    )
    baseline = study.user_attrs.get("baseline", {})
    board = leaderboard(study, None)
    args.result = {
        "study": study.study_name,
        "objective": recipe.search.objective,
        "finished_trials": len(board),
        "baseline": {"objective": baseline.get("objective"), "by_batch": baseline.get("by_batch")},
        "leaderboard": board,
        "confirmation": None,
        "chosen": None,
        "deploy_file": None,
    }
    here = study.user_attrs.get(WORKER_PREFIX + worker_id(), {})
    if here.get("baseline"):  # this worker measured its baseline, or reused the study's (a restart)
        print(f"baseline speed: {here['baseline']}")
    kind = recipe.search.objective
    by_batch = baseline.get("by_batch") or {}
    print(
        f"study {study.study_name}: {len(board)} finished trials; "
        f"baseline {kind}: {num(baseline.get('objective'), 4)} (batch {recipe.speed.batch_size})"
        + (
            "; by batch: "
            + ", ".join(
                f"{b}: {num(v, 4)}" + (" (misses the latency targets)" if b in (baseline.get("late_batches") or {}) else "")
                for b, v in by_batch.items()
            )
            if len(by_batch) > 1
            else ""
        )
    )
    rows = []
    for r in leaderboard(study, args.top):
        d, dep = r["drop"], r["deployment"]
        rows.append(
            [
                r["trial"],
                r["state"],
                "yes" if r["feasible"] else "no",
                num(r["objective"], 4) if r["objective"] is not None else "",
                drop_text(d) if d else "",
                serving_cell(dep.get("batch_size"), dep.get("threads"), dep.get("streams")),
                chain_text(r["passes"]) + (f": {r['reason']}" if r["reason"] else ""),
            ]
        )
    print(table(rows, ["trial", "state", "feasible", kind, "drop (CI)", SERVING_COLUMN, "passes"]))
    c = recipe.search.constraint
    b = recipe.budget
    metric, budget = b.metric, b.text
    outcome = conclude(recipe, study, Path(args.deploy) if args.deploy else None, clock)
    confirmation = outcome.confirmation
    if confirmation is not None:
        args.result["confirmation"] = confirmation.as_dict()
        print("\n" + "\n".join(summary_lines(confirmation)))
    if clock is not None:
        args.result["time_budget"] = clock.as_dict()
        print(f"\n{clock.text()}")
    if outcome.chosen is None and confirmation is None:
        near = outcome.closest
        if near is None:
            print(
                f"\nno trial was measured in full; nothing is known to meet {budget}. "
                "Look at the failed and pruned trials above, then raise --trials or widen the space."
            )
        else:
            m = Measurement.of(near)
            over = m.violation
            print(
                f"\nno configuration met {budget}. Closest: trial {near.number} ({chain_text(m.passes)}), "
                f"drop {drop_text(m.drop)}, over budget by "
                f"{100 * over:.2f} points" + ("" if c.relative else f" ({over:.4g})") + ". "
                "Try a looser max_drop, more trials, milder settings, or a larger eval set for a narrower interval."
            )
        return EXIT_NOTHING_MET
    if outcome.chosen is None:
        tried = "; ".join(f"trial {a.trial}: {drop_text(a.drop) if a.drop else a.status}" for a in confirmation.attempts)
        print(
            f"\nno configuration was confirmed: the {len(confirmation.attempts)} cheapest within budget on the "
            f"selection part were over {budget} on the held-out part, or failed there: {tried}. Nothing is written "
            "to deploy.yaml. Try a larger eval set (narrower intervals), a looser max_drop, or milder settings."
        )
        return EXIT_NOTHING_MET
    best, config, path = outcome.chosen, outcome.config, outcome.deploy_file
    args.result |= {"chosen": config, "deploy_file": str(path)}
    m = config["measured"]
    saving = ""
    h = confirmation.headline if confirmation is not None else None
    if h is not None:
        saving = f"\n  saving: {ratio_text(h.ratio)} better than the {h.against} (confirmed, {h.why.split(':')[0]})"
    elif "cheaper_x" in m:
        x, was = m["cheaper_x"], f"the baseline's ${m['baseline_usd_per_m_tokens']:.5f}"
        saving = f", {x:.2f}x cheaper than {was}" if x >= 1 else f", {1 / x:.2f}x the cost of {was} (no saving)"
    shown = confirmation.attempt.drop if confirmation is not None and confirmation.attempt else Measurement.of(best).drop
    if not config["passes"]:
        saving += "; the cheapest choice within budget is the model without compression, at this batch size and thread count"
    print(
        f"\nchosen: trial {best.number}: {chain_text(config['passes'])} on {config['runtime']}, "
        f"{serving_text(config['batch_size'], config['threads'], config.get('streams'))}{saving}\n  "
        f"{metric} drop {drop_text(shown)} ({m.get('drop_measured_on', 'on the eval set')}) within {budget}; "
        f"{kind} {num(best.values[0], 4)} in the search\n  deployment: {path}\n  rebuild: costopt deploy {path} --out DIR"
    )
    if confirmation is not None:
        for s in confirmation.savings[:-1]:  # the headline is the last
            print(f"  against the {s.against}: {ratio_text(s.ratio) if s.ratio else '–'}; {s.why}")
    elif "baseline_best_batch" in m:
        bb = m["baseline_best_batch"]
        print(
            f"  against the baseline at its own best batch size ({bb['batch_size']}, ${bb['usd_per_m_tokens']:.5f}): "
            f"{bb['cheaper_x']:.2f}x cheaper"
        )
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from optimizer.deploy import SERVE_FILE, build, read_deployment

    config = read_deployment(Path(args.deploy_file))
    out = build(Path(args.deploy_file), Path(args.out))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(
        f"built trial {config.get('trial')} of {config.get('study')}: {chain_text(config['passes'])} "
        f"({config.get('runtime')}) in {out} ({size / 2**20:.1f} MiB)\n"
        f"load it with: optimizer.load_deployment({str(out)!r})"
    )
    if (out / SERVE_FILE).is_file():
        command = (out / SERVE_FILE).read_text().splitlines()[-1].removeprefix("exec ")
        print(f"serve it as measured ({out / SERVE_FILE}):\n  {command}")
    return 0


def _workload(pairs: list[str]) -> Any:
    """--workload key=value pairs -> a cost.Workload (None when none given)."""
    if not pairs:
        return None
    from pydantic import ValidationError

    from cost.workload import Workload

    fields: dict[str, float] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            fields[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise UserError(f"--workload {pair!r} is not KEY=NUMBER", "write e.g. --workload input_tokens_per_day=2e8")
    try:
        return Workload(**fields)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise UserError(
            f"--workload {where + ': ' if where else ''}{err['msg'].removeprefix('Value error, ')}",
            f"use {', '.join(Workload.model_fields)}",
        ) from None


def cmd_report(args: argparse.Namespace) -> int:
    from optimizer.report import FORMATS, RunSource, build_report, open_source, write_report

    src = open_source(args.target, args.study, args.recipe)
    formats = [f.strip() for f in args.format.split(",")] if args.format else list(src.recipe.report.formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise UserError(f"unknown report format {bad[0]!r}", f"use a comma-separated subset of {','.join(FORMATS)}")
    report = build_report(src, _workload(args.workload), args.grid_kg_per_kwh, args.job_usd_per_hour)
    if args.out:
        out = Path(args.out)
    elif isinstance(src, RunSource):
        out = src.path.parent
    else:
        out = src.folder or Path(src.recipe.output_dir) / report["name"]
    written = write_report(report, out, formats)
    from optimizer.report.document import build_document

    summary = [line.replace("**", "") for line in build_document(report, {}).summary]
    args.result = {"summary": summary, "files": {fmt: str(path) for fmt, path in written.items()}}
    print("\n".join(summary))
    for fmt, path in written.items():
        print(f"{fmt:5} {path}")
    return 0


def cmd_hardware(args: argparse.Namespace) -> int:
    from optimizer.measure.system import describe, fingerprint

    fp = fingerprint()
    print(json.dumps(fp, indent=2) if args.json else describe(fp))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from optimizer.recipe import recipe_schema

    text = json.dumps(recipe_schema(), indent=2)
    if args.out:
        from optimizer.results import write_text_atomic

        write_text_atomic(Path(args.out), text + "\n")
        print(f"wrote the recipe JSON Schema to {args.out}", file=sys.stderr)
    else:
        print(text)
    return 0


JSON_COMMANDS = (cmd_validate, cmd_run, cmd_search, cmd_report)


def _quiet(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "quiet", False) or getattr(args, "quiet_all", False))


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("costopt")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        from optimizer.measure.system import source_version

        return f"{source_version()} (source tree)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="costopt", description="Measure and minimize the cost per token of open models.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", dest="quiet_all", action="store_true", help="no progress display, warnings only as errors")
    p.add_argument("--version", action="version", version=f"costopt {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    def recipe_cmd(name: str, help_: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_)
        c.add_argument("recipe", help="recipe YAML file")
        c.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a recipe field, e.g. --set speed.batch_size=8 (repeatable)",
        )
        c.add_argument("--json", action="store_true", help=JSON_HELP)
        return c

    def tracked(c: argparse.ArgumentParser) -> None:
        c.add_argument(
            "--mlflow",
            nargs="?",
            const="",
            metavar="TRACKING_URI",
            help="log to MLflow (the mlflow extra), one MLflow run per trial, in an experiment named after the recipe; "
            "TRACKING_URI defaults to $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db",
        )

    recipe_cmd("validate", "check a recipe without running it").set_defaults(fn=cmd_validate)
    run = recipe_cmd("run", "measure the baseline and the recipe's passes, write a result JSON")
    run.add_argument("--out", help="results folder (default: the recipe's output_dir, runs/)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    tracked(run)
    run.set_defaults(fn=cmd_run)
    search = recipe_cmd("search", "Optuna search of the recipe's ranges: cheapest configuration within the quality budget")
    search.add_argument("--trials", type=int, help="finished trials the study should hold (default: search.trials)")
    search.add_argument(
        "--minutes",
        type=float,
        help="the whole search's wall time, confirmation included (search.time_budget_minutes): fewer trials and "
        "timing rounds when they would not fit, and the output says what was cut",
    )
    search.add_argument("--storage", help="Optuna storage URL (default: sqlite file under runs/; postgresql://... to share)")
    search.add_argument("--deploy", help="where to write the chosen configuration (default: runs/<study>/deploy.yaml)")
    search.add_argument("--top", type=int, default=15, help="leaderboard rows (default 15)")
    search.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    tracked(search)
    search.set_defaults(fn=cmd_search)
    deploy = sub.add_parser("deploy", help="rebuild the artifact a search chose, from its deploy.yaml")
    deploy.add_argument("deploy_file", help="deploy.yaml written by `costopt search`")
    deploy.add_argument("--out", required=True, help="folder to build the artifact into")
    deploy.set_defaults(fn=cmd_deploy)
    rep = sub.add_parser("report", help="Markdown / HTML / JSON cost-saving report of a run or a search")
    rep.add_argument(
        "target",
        help="run folder or result.json, search folder runs/<study>/ or study.db, "
        "an Optuna storage URL, or the recipe a search ran",
    )
    rep.add_argument("--study", help="study name, when the storage holds several")
    rep.add_argument("--recipe", help="the recipe it ran (only for runs and studies an older costopt wrote)")
    rep.add_argument("--out", help="folder for the report (default: beside the run or study)")
    rep.add_argument("--format", help="comma-separated subset of md,html,json (default: the recipe's report.formats)")
    rep.add_argument(
        "--workload",
        action="append",
        default=[],
        metavar="KEY=NUMBER",
        help="traffic for the monthly figures, e.g. input_tokens_per_day=2e8 (repeatable; default: the recipe's workload)",
    )
    rep.add_argument("--grid-kg-per-kwh", type=float, help="grid carbon intensity for CO2 (default 0.4)")
    rep.add_argument(
        "--job-usd-per-hour",
        type=float,
        help="price of the machine the optimization ran on, for break-even (default: the catalog entry's)",
    )
    rep.add_argument("--json", action="store_true", help=JSON_HELP)
    rep.set_defaults(fn=cmd_report)
    schema = sub.add_parser("schema", help="the JSON Schema of recipes (for editors: yaml-language-server, VS Code)")
    schema.add_argument("--out", help="write it to this file instead of stdout")
    schema.set_defaults(fn=cmd_schema)
    hw = sub.add_parser("hardware", help="this machine's fingerprint; `hardware list` shows the price catalog")
    hw.add_argument("--json", action="store_true")
    hw.set_defaults(fn=cmd_hardware)
    from optimizer.cost_cli import add_commands

    add_commands(sub, hw)
    return p


# Faults of the disk, not of costopt: a one-line error (partial files are removed where they were written)
DISK_ERRNOS = {
    errno.ENOSPC: "free space there, or point --out (or output_dir) at a disk with room",
    errno.EDQUOT: "free space within your quota, or point --out (or output_dir) elsewhere",
    errno.EROFS: "point --out (or output_dir) at a writable folder",
    errno.EACCES: "point --out (or output_dir) at a folder you may write to",
}


# Warnings libraries log on every run that are no advice to a user: torchao (imported by transformers
# whenever it is installed) about CUDA kernels and triton a CPU machine lacks; torch about its enum registry.
NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.ERROR if args.quiet_all else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    as_json = getattr(args, "json", False) and args.fn in JSON_COMMANDS
    out = sys.stdout
    code, error = 0, None
    try:
        # --json: the human-readable text goes to stderr, one JSON object to stdout
        with stop_on_signals(), contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            code = args.fn(args)
    except Stopped as e:  # SIGTERM (a preempted worker) or Ctrl-C: the running trial is failed, the rest kept
        error, code = f"stopped by {e}; finished results are on disk", e.exit_code
    except UserError as e:
        error, code = e.one_line(), EXIT_USER_ERROR
    except CostInputError as e:
        error, code = str(e), EXIT_USER_ERROR
    except KeyboardInterrupt:
        error, code = "interrupted; finished results are on disk", 130
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            raise
        where = f" writing {e.filename}" if e.filename else ""
        error = f"{e.strerror}{where}; fix: {DISK_ERRNOS[e.errno]}; finished results are on disk"
        code = EXIT_USER_ERROR
    if error is not None:
        print(f"costopt: error: {error}", file=sys.stderr)
    if as_json:
        payload = getattr(args, "result", None) or {}
        print(json.dumps(payload | {"exit_code": code} | ({"error": error} if error else {}), default=json_default), file=out)
    return code


if __name__ == "__main__":
    sys.exit(main())
