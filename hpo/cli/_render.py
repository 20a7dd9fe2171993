"""A pipeline's state as text: each stage's study, the final test metrics and the time budget
(``hpo status``, and what ``run``, ``run-stage`` and ``worker`` print when they are done)."""

from __future__ import annotations

from typing import Any

from hpo.tasks import CLASSIFICATION, task_kind


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _fmt_selected(selected: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in selected.items())


def _render_state(st: dict[str, Any]) -> list[str]:
    trials = ", ".join(f"{n} {s.lower()}" for s, n in sorted(st["trials"].items())) or "no trials"
    line = f"{st['study']:<40}{st['state']:<13}{trials}"
    if st.get("precision"):
        line += f" ({'/'.join(st['precision'])})"
    if st.get("track"):
        line += f" [{st['track']}]"
    sel = st.get("selection")
    if sel:
        line += f"  -> {_fmt_selected(sel['selected'])}"
        ev = sel.get("evidence")
        if ev:
            verdict = "within noise" if ev["within_noise"] else "beyond noise"
            low, high = ev["interval"]
            line += (
                f"  [{verdict}: {ev['difference']:+.4f}, 95% CI {low:+.4f}..{high:+.4f} "
                f"vs {_fmt_selected(ev['runner_up'])}]"
            )
    stopped = st.get("stopped")
    if stopped:
        return [
            line,
            f"{'':<40}stopped asking after {stopped['trials']} of {stopped['n_trials']} trials "
            f"({stopped['why']})",
        ]
    return [line]


def _render_status(r: dict[str, Any]) -> str:
    lines = [f"pipeline {r['pipeline']} ({r['study_file']}) in {r['storage']}", ""]
    if r.get("numerics"):
        from hpo.tuning.numerics import Numerics

        lines[-1:] = [f"numerics: {Numerics.from_dict(r['numerics']).describe()}", ""]
    for st in r["stages"]:
        lines.extend(_render_state(st))
    m = r.get("test_metrics")
    if m:
        lines += ["", f"final test: {_test_line(m)}"]
        if m.get("dropped_target_rows"):
            lines.append(f"({m['dropped_target_rows']:,} row(s) of the table with an empty target left out)")
    tb = r.get("time_budget")
    if tb:
        from hpo.tuning.budget import describe

        lines += [
            "",
            f"time budget: {describe(tb['spent'])} of {describe(tb['seconds'])} spent "
            f"({tb['spent'] / tb['seconds']:.0%}; the stages' run time, from their trials)",
        ]
    return "\n".join(lines)


def _classes(m: dict[str, Any]) -> bool:
    """Whether test metrics ``m`` are of a task with classes."""
    return task_kind(str(m.get("task", CLASSIFICATION.name))).has_classes


def _headline(m: dict[str, Any]) -> str:
    if not _classes(m):
        return f"RMSE {m['rmse']:.4g}"
    return f"accuracy {m['accuracy']:.2%}"


def _test_line(m: dict[str, Any]) -> str:
    if not _classes(m):
        line = (
            f"RMSE {m['rmse']:.4g}, MAE {m['mae']:.4g}, R² {m['r2']:.4f}, loss {m['loss']:.4f} "
            f"(predicting the training mean: RMSE {m['constant_rmse']:.4g})"
        )
        member = f"RMSE {m.get('rmse_mean', 0.0):.4g} ± {m.get('rmse_sd', 0.0):.2g}"
    else:
        line = (
            f"accuracy {m['accuracy']:.2%}, loss {m['loss']:.4f}, balanced accuracy "
            f"{m['balanced_accuracy']:.2%}, macro-F1 {m['macro_f1']:.4f}"
        )
        member = f"accuracy {m.get('accuracy_mean', 0.0):.2%} ± {m.get('accuracy_sd', 0.0):.2%}"
    if m.get("ensemble") == "greedy":
        key = "accuracy" if _classes(m) else "rmse"
        best = m["best_member"][key]
        shown = f"{best:.2%}" if key == "accuracy" else f"{best:.4g}"
        return f"{line}; a greedy ensemble of {m['members']} models (its best single member: {key} {shown})"
    if m.get("ensemble"):
        return f"{line}; an ensemble of {m['ensemble']} models (the members: {member})"
    if m.get("seeds", 1) > 1:
        return f"{line}; the mean of {m['seeds']} seeds ({member})"
    return line
