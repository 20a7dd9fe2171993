"""``hpo data oracle``: the synthetic world's ceiling beside the majority class and a linear model."""

from __future__ import annotations

import argparse
from typing import Any

from hpo.cli._common import Command


class Oracle(Command):
    name = "oracle"
    help = "the Bayes-optimal test figure of a synthetic draw (the ceiling no tuner can pass)"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        from hpo.cli._data import _data_options

        _data_options(parser)
        parser.add_argument(
            "--no-linear", action="store_true", help="skip the linear model (minutes on a full-size draw)"
        )

    @classmethod
    def run(cls, args: argparse.Namespace) -> dict[str, Any]:
        from hpo.cli._data import _data_settings
        from hpo.data import oracle

        settings = _data_settings(args)
        ceiling = oracle.oracle(settings, data_dir=args.data_dir)
        baselines = None if args.no_linear else oracle.baselines(settings, data_dir=args.data_dir)
        return {"ceiling": ceiling, "baselines": baselines}

    @classmethod
    def render(cls, result: dict[str, Any]) -> str:
        c, b = result["ceiling"], result["baselines"]
        head = f"synthetic draw rows={c['rows']:,} seed={c['seed']}: {c['test_rows']:,} test rows"
        if "accuracy" in c:
            lines = [
                head,
                f"Bayes-optimal (the ceiling) accuracy {c['accuracy']:.2%}, loss {c['loss']:.4f} "
                f"(it expects {c['expected_accuracy']:.2%} of itself)",
            ]
            if b:
                lines += [
                    f"majority class               accuracy {b['majority_accuracy']:.2%}",
                    f"linear model                 accuracy {b['linear_accuracy']:.2%} ({b['linear']})",
                ]
            return "\n".join(lines)
        lines = [head, f"Bayes-optimal (the ceiling) RMSE {c['rmse']:.4g} years, MAE {c['mae']:.4g}"]
        if b:
            lines += [
                f"training mean                RMSE {b['mean_rmse']:.4g}",
                f"linear model                 RMSE {b['linear_rmse']:.4g} ({b['linear']})",
            ]
        return "\n".join(lines)
