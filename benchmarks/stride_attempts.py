"""Attempts at a better STRIDE, scored on a benchmark's full protocol beside everything else (issue 10).

Each attempt is a method spec run into the same output folder as ``stride bench NAME --out DIR``, so
it reuses that run's retrains (same ground truth) and its rows join the same report.json:

- ``attempt_ridge``: the suite's logit-form STRIDE with ridge recovery instead of the Lasso
  (influence need not be sparse); ridge strength chosen on validation.
- ``attempt_dense``: twice the subsets per example (K x 2, d x 2): a denser measurement.
- ``attempt_dense_x2``, ``attempt_dense_x4``: K and d x 2 / x 4 with the steps x 2 / x 4 (the same epochs).
- ``attempt_stability_weight{0.1,0.3,3}``, ``attempt_steps_x{0.1,0.25,0.5}``: a weaker or stronger stability
  term, fewer steps (closer to a plain member gradient in the operators' space).
- ``attempt_damping{w}``: an L2 penalty w ||W^T A_k||^2 on each member pair's operator (its weight change), the
  analogue of an influence function's damping (``training.damping_weight``).
- Classifier suites only, operators on the MLP's first layer (``attempt_pre_activation``, form ``pre_activation``:
  a low-rank change of W1) or on both layers (``attempt_full``, form ``full``), with the damping grid
  (``..._damping{w}``), and ``attempt_full_rank_x2`` / ``_rank_half`` / ``_stability_weight{0.3,3}``,
  ``attempt_pre_activation_rank_x2_damping{0.01,0.1}``, ``attempt_pre_activation_damping{0.01,0.1}_stability_weight{0.3,3,10}``,
  ``attempt_pre_activation_damping{0.01,0.1}_linearity{0.1,1,10}`` (``training.linearity_weight``);
  ``benchmarks/layer_signal.py`` shows why: the first layer's gradients carry most of the signal there.
- ``attempt_ensemble``: STRIDE (logit) + Kronfluence EK-FAC, standardised per query and blended;
  the weight and STRIDE's lambda chosen on validation.
- Classifier suites only, ``attempt_ensemble_first_layer_logra`` / ``_ekfac``: the suite's first-layer STRIDE
  (``stride_pre_activation``) + logra (the paper's LoGRA + STRIDE) or EK-FAC; weight, damping variant, lambda and
  the peer's damping chosen on validation. ``attempt_ensemble_first_layer_logit``: the same first-layer STRIDE
  + the logit form's STRIDE (an operator bank per layer, no gradient method).

Operator forms whose per-subset size does not grow with the vocabulary (issue 11), beside the suite's
``stride_head`` and ``stride_logit_members``:

- ``attempt_factored``: B(h) A_k U with A_k r x 256 and one shared, learned output basis U (256 x V);
- ``attempt_members_background``: member columns plus one shared r x V matrix weighted per operator;
- ``attempt_members_rank16``, ``attempt_members_rank48``, ``attempt_members_rank64``: member columns at rank
  16 / 48 / 64 (the suite's ``stride_logit_members`` is rank 48).

Cheaper operator training (issue 11: the default profile's cost is mostly operator steps), against the
suite's ``stride_logit_members`` (member columns, rank 48, 1,000 steps: about 4 epochs on pydoc-gpt; LM
suites only):

- ``attempt_members_epochs3``, ``attempt_members_epochs2``: the same operators trained 3 / 2 epochs of the
  member pairs (the default profile trains 3);
- ``attempt_members_columns512``, ``attempt_members_columns256``: 512 / 256 member columns per operator
  instead of 1,024 (a half / a quarter of each step's products); ``attempt_members_columns512_epochs5``: 512
  columns trained 5 epochs; ``attempt_members_columns512_stability16``, ``..._stability8``,
  ``attempt_members_stability8``: 16 / 8 non-member pairs per step for the stability term instead of 32
  (512 / 1,024 columns; ``attempt_members_columns512_epochs5_stability8``: 5 epochs with 8); ``attempt_members_columns512_epochs3_lr0.006`` (``_stability16``), ``..._lr0.01``:
  3 epochs at a higher learning rate.

On the default profile's operators (512 columns, 8 non-member pairs; 4 epochs):

- ``attempt_default_lazy_adam``, ``..._rank32_columns768``, ``..._stability_weight0.5`` / ``2``, ``..._init0.01``,
  ``..._lr0.002``: changes at about the same cost;
- ``attempt_default_d{3,4,6}`` and ``..._d{4,6}_K_x{1.5,2}``, ``..._d4_K_x3``, ``..._d3_K_x2``, ``..._d4_K_half``:
  sparser designs (each example in d subsets) and more or fewer subsets K, the steps following n d;
  ``..._d4_columns1024``, ``..._d6_columns1024``, ``..._d4_epochs6``, ``..._d6_epochs5``;
- ``attempt_default_d12_K_x4``, ``..._d18_K_x6``, ``..._d24_K_x8``: as dense as 2 / 3 / 4 default designs in one
  design (subsets of 12 passages, each in 12 / 18 / 24), 4 epochs; ``..._d12_K_x4_epochs3``;
- ``attempt_default_epochs8``, ``attempt_default_wd{0.3,1,3,10}``: the default design trained 8 epochs, or with
  AdamW weight decay; ``attempt_default_damping{w}``: with the damping term (``training.damping_weight``);
  ``attempt_default_train_seed{1,2}``: the default design (seed 0) with other training seeds
  (``benchmarks/design_averaging.py`` scores averages of such runs); ``attempt_default_init0`` (``_train_seed1``):
  operators started at zero;
- ``attempt_logit_d6_K_x2``: the vocabulary-sized logit form on the default profile's design (K x 2, d 6);
- ``attempt_ensemble_default``: the default profile's STRIDE (K x 2, d 6) + EK-FAC, as ``attempt_ensemble``;
  ``attempt_ensemble_d12_K_x4``: the same with ``attempt_default_d12_K_x4``'s STRIDE.

``--seeds S`` repeats each chosen attempt with design and training seeds 1..S-1 (``NAME_s1``, ...).

    .venv/bin/python benchmarks/stride_attempts.py pydoc-gpt --out DIR [--only attempt_ensemble,...] [--seeds S]
        [--leave-out]  # when DIR's run had --leave-out
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stride_assets.engine.evaluation import suites
from stride_assets.engine.evaluation.bench import MethodSpec, run_benchmark
from stride_assets.engine.evaluation.methods import KRONFLUENCE_DAMPING
from stride_assets.engine.training import steps_for_epochs

RIDGE_GRID, WIDE_GRID = suites.RIDGE_GRID, suites.WIDE_GRID
ENSEMBLE_GRID = [{"weight": w, "first": {"lambda_ratio": lam}} for w in (0.25, 0.5, 0.75) for lam in (0.2, 0.3)]
PEER_DAMPING = {"logra": suites.LOGRA_DAMPING_GRID, "kronfluence_ekfac": KRONFLUENCE_DAMPING}

DAMPING = (1e-3, 1e-2, 1e-1, 1.0, 3.0, 10.0)  # damping_weight of the ``*_damping`` attempts

FORM_ATTEMPTS = {
    "attempt_members_rank16": {"columns": 1024, "rank": 16},
    "attempt_factored": {"output_rank": 256},
    "attempt_members_background": {"columns": 1024, "background": True},
    "attempt_members_rank48": {"columns": 1024, "rank": 48},
    "attempt_members_rank64": {"columns": 1024, "rank": 64},
}


def cheaper_training(members, n: int) -> dict:
    """The member-column attempts with fewer epochs or columns (suites with ``stride_logit_members`` only)."""
    bs, d = members.training.batch_size, members.design.d
    out = {f"attempt_members_epochs{e}": members.with_(training={"steps": steps_for_epochs(e, bs, n, d)})
           for e in (3, 2)}
    out |= {f"attempt_members_columns{m}": members.with_(operators={"columns": m}) for m in (512, 256)}
    out["attempt_members_columns512_epochs5"] = members.with_(
        operators={"columns": 512}, training={"steps": steps_for_epochs(5, bs, n, d)})
    c512 = members.with_(operators={"columns": 512})
    out |= {f"attempt_members_columns512_stability{b}": c512.with_(training={"stability_batch_size": b})
            for b in (16, 8)}
    out["attempt_members_stability8"] = members.with_(training={"stability_batch_size": 8})
    out["attempt_members_columns512_epochs5_stability8"] = out["attempt_members_columns512_epochs5"].with_(
        training={"stability_batch_size": 8})
    for lr in (6e-3, 1e-2):
        out[f"attempt_members_columns512_epochs3_lr{lr:g}"] = c512.with_(
            training={"steps": steps_for_epochs(3, bs, n, d), "lr": lr})
    out["attempt_members_columns512_epochs3_lr0.006_stability16"] = out[
        "attempt_members_columns512_epochs3_lr0.006"].with_(training={"stability_batch_size": 16})
    return out | same_cost(out["attempt_members_columns512_stability8"]) | sparser(
        out["attempt_members_columns512_stability8"], n)


def sparser(default, n: int) -> dict:
    """The default profile's training on a sparser design (each example in d = 4 or 6 subsets, not 8): fewer
    member pairs, so 4 epochs take fewer steps; d 4 also at K / 2 (subsets as large as at d 8) and with the
    saved steps spent on 1,024 columns."""
    K, bs = default.design.K, default.training.batch_size
    out = {f"attempt_default_d{d}": default.with_(design={"d": d}, training={"steps": steps_for_epochs(4, bs, n, d)})
           for d in (4, 6)}
    out["attempt_default_d4_K_half"] = out["attempt_default_d4"].with_(design={"K": K // 2})
    out["attempt_default_d4_columns1024"] = out["attempt_default_d4"].with_(operators={"columns": 1024})
    out["attempt_default_d6_columns1024"] = out["attempt_default_d6"].with_(operators={"columns": 1024})
    out["attempt_default_d4_epochs6"] = out["attempt_default_d4"].with_(training={"steps": steps_for_epochs(6, bs, n, 4)})
    out["attempt_default_d6_epochs5"] = out["attempt_default_d6"].with_(training={"steps": steps_for_epochs(5, bs, n, 6)})
    out["attempt_default_d3"] = default.with_(design={"d": 3}, training={"steps": steps_for_epochs(4, bs, n, 3)})
    out["attempt_default_d4_K_x3"] = out["attempt_default_d4"].with_(design={"K": 3 * K})
    out["attempt_default_d3_K_x2"] = out["attempt_default_d3"].with_(design={"K": 2 * K})
    for d, scale in ((12, 4), (18, 6), (24, 8)):  # as dense as 2 / 3 / 4 default designs, in one design and Lasso
        out[f"attempt_default_d{d}_K_x{scale}"] = default.with_(
            design={"d": d, "K": scale * K}, training={"steps": steps_for_epochs(4, bs, n, d)})
    out["attempt_default_d12_K_x4_epochs3"] = out["attempt_default_d12_K_x4"].with_(
        training={"steps": steps_for_epochs(3, bs, n, 12)})
    for d in (4, 6):
        for scale in (1.5, 2):
            out[f"attempt_default_d{d}_K_x{scale:g}"] = out[f"attempt_default_d{d}"].with_(
                design={"K": int(K * scale)})
    default_design = out["attempt_default_d6_K_x2"]  # the default profile's design and training
    out["attempt_default_epochs8"] = default_design.with_(training={"steps": steps_for_epochs(8, bs, n, 6)})
    out |= {f"attempt_default_damping{w:g}": default_design.with_(training={"damping_weight": w}) for w in DAMPING}
    out |= {f"attempt_default_wd{wd:g}": default_design.with_(training={"weight_decay": wd}) for wd in (0.3, 1, 3, 10)}
    # the default design (seed 0) with other training seeds: how much of the seeds' spread is the training's
    out |= {f"attempt_default_train_seed{s}": default_design.with_(training={"seed": s}) for s in (1, 2)}
    # operators started at zero (no initial noise in A_k), with two training seeds
    out |= {f"attempt_default_init0{'_train_seed' + str(s) if s else ''}": default_design.with_(
        operators={"init_scale": 0.0}, training={"seed": s}) for s in (0, 1)}
    return out


def same_cost(default) -> dict:
    """Changes to the default profile's training (512 columns, 8 non-member pairs) at about its cost."""
    return {
        "attempt_default_lazy_adam": default.with_(training={"optimizer": "lazy_adam"}),
        "attempt_default_rank32_columns768": default.with_(operators={"rank": 32, "columns": 768}),
        "attempt_default_stability_weight0.5": default.with_(training={"stability_weight": 0.5}),
        "attempt_default_stability_weight2": default.with_(training={"stability_weight": 2.0}),
        "attempt_default_init0.01": default.with_(operators={"init_scale": 1e-2}),
        "attempt_default_lr0.002": default.with_(training={"lr": 2e-3}),
    }


def both_layers(stride_logit) -> dict:
    """Classifier suites: operators on both layers of the MLP (form ``full``), at the logit form's settings, with
    twice / half the rank, and with a weaker or stronger stability term."""
    full = stride_logit.with_(operators={"form": "full"})
    rank = full.operators.rank
    out = {"attempt_full": full, "attempt_full_rank_x2": full.with_(operators={"rank": 2 * rank}),
           "attempt_full_rank_half": full.with_(operators={"rank": rank // 2})}
    out |= {f"attempt_full_stability_weight{w:g}": full.with_(training={"stability_weight": w}) for w in (0.3, 3)}
    out |= {f"attempt_full_damping{w:g}": full.with_(training={"damping_weight": w}) for w in DAMPING}
    # both layers with a basis nearly as wide as their inputs (the first layer's few inputs are not crowded out)
    out |= {f"attempt_full_rank_x2_damping{w:g}": out["attempt_full_rank_x2"].with_(training={"damping_weight": w})
            for w in (0.01, 0.1)}
    pre = stride_logit.with_(operators={"form": "pre_activation"})
    out["attempt_pre_activation"] = pre
    out |= {f"attempt_pre_activation_damping{w:g}": pre.with_(training={"damping_weight": w}) for w in DAMPING}
    # the first layer, damped, with a weaker or stronger stability term (less or more curvature)
    out |= {f"attempt_pre_activation_damping{w:g}_stability_weight{sw:g}": pre.with_(
        training={"damping_weight": w, "stability_weight": sw}) for w in (0.01, 0.1) for sw in (0.3, 3, 10)}
    # the first layer, damped, with the linearity term (responses that compose additively over members)
    out |= {f"attempt_pre_activation_damping{w:g}_linearity{lw:g}": pre.with_(
        training={"damping_weight": w, "linearity_weight": lw}) for w in (0.01, 0.1) for lw in (0.1, 1, 10)}
    # the first layer with twice the rank: is the gap to logra the basis's size?
    out |= {f"attempt_pre_activation_rank_x2_damping{w:g}": pre.with_(
        operators={"rank": 2 * rank}, training={"damping_weight": w}) for w in (0.01, 0.1)}
    return out


def first_layer_ensembles(first_layer: dict, stride_logit=None) -> list[MethodSpec]:
    """Classifier suites: the suite's first-layer STRIDE (``stride_pre_activation``'s damping sweep) blended with
    logra (the paper's LoGRA + STRIDE), with EK-FAC, or (given ``stride_logit``) with the logit form's STRIDE,
    an operator bank on each of the MLP's two layers and no gradient method; weight, variant, lambda and the
    partner's own option chosen on validation."""
    firsts = [{"variant": label, **option} for label in first_layer for option in WIDE_GRID]
    partners = {short: ((peer, {}), PEER_DAMPING[peer]) for short, peer in (("logra", "logra"),
                                                                             ("ekfac", "kronfluence_ekfac"))}
    if stride_logit is not None:
        partners["logit"] = (("stride", {"config": stride_logit}), suites.LAMBDA_GRID)
    return [MethodSpec(f"attempt_ensemble_first_layer_{short}", {
        "first": ("stride_sweep", {"configs": first_layer}), "second": second},
        grid=[{"weight": w, "first": first, "second": option}
              for w in (0.25, 0.5, 0.75) for first in firsts for option in options], method="ensemble")
        for short, (second, options) in partners.items()]


def attempts(stride_logit, members=None, n: int = 0, first_layer: dict | None = None) -> list[MethodSpec]:
    K, d = stride_logit.design.K, stride_logit.design.d
    cheaper = cheaper_training(members, n) if members is not None else {}
    layers = both_layers(stride_logit) if first_layer else {}
    # the vocabulary-sized logit form on the default profile's design (subsets of about 12, each example in 6)
    cheaper["attempt_logit_d6_K_x2"] = stride_logit.with_(design={"K": 2 * K, "d": 6}, training={
        "steps": steps_for_epochs(stride_logit.training.steps * stride_logit.training.batch_size / (n * d),
                                  stride_logit.training.batch_size, n, 6)})
    extra = first_layer_ensembles(first_layer, stride_logit) if first_layer else []
    if "attempt_default_d6_K_x2" in cheaper:  # the default profile's STRIDE (its design too) + EK-FAC
        extra.append(MethodSpec("attempt_ensemble_default", {
            "first": ("stride", {"config": cheaper["attempt_default_d6_K_x2"]}), "second": ("kronfluence_ekfac", {})},
            grid=ENSEMBLE_GRID, method="ensemble"))
        extra.append(MethodSpec("attempt_ensemble_d12_K_x4", {  # the same with twice as dense a STRIDE
            "first": ("stride", {"config": cheaper["attempt_default_d12_K_x4"]}), "second": ("kronfluence_ekfac", {})},
            grid=ENSEMBLE_GRID, method="ensemble"))
    return extra + [
        MethodSpec("attempt_ridge", {"config": stride_logit}, grid=RIDGE_GRID, method="stride"),
        MethodSpec("attempt_dense", {"config": stride_logit.with_(design={"K": 2 * K, "d": 2 * d})},
                   grid=suites.LAMBDA_GRID, method="stride"),
        *(MethodSpec(f"attempt_dense_x{x}", {"config": stride_logit.with_(
            design={"K": x * K, "d": x * d}, training={"steps": x * stride_logit.training.steps})},
            grid=suites.LAMBDA_GRID, method="stride") for x in (2, 4)),
        # less curvature (weaker stability term) or an earlier stop: closer to a plain member gradient
        *(MethodSpec(f"attempt_stability_weight{w:g}", {"config": stride_logit.with_(training={"stability_weight": w})},
                     grid=suites.LAMBDA_GRID, method="stride") for w in (0.1, 0.3, 3)),
        *(MethodSpec(f"attempt_steps_x{f:g}", {"config": stride_logit.with_(
            training={"steps": max(1, round(f * stride_logit.training.steps))})},
            grid=suites.LAMBDA_GRID, method="stride") for f in (0.1, 0.25, 0.5)),
        # an L2 penalty on the operators: the analogue of an influence function's damping
        *(MethodSpec(f"attempt_damping{w:g}", {"config": stride_logit.with_(training={"damping_weight": w})},
                     grid=suites.LAMBDA_GRID, method="stride") for w in DAMPING),
        MethodSpec("attempt_ensemble", {"first": ("stride", {"config": stride_logit}),
                                        "second": ("kronfluence_ekfac", {})}, grid=ENSEMBLE_GRID, method="ensemble"),
        *(MethodSpec(name, {"config": stride_logit.with_(operators=ops)}, grid=suites.LAMBDA_GRID, method="stride")
          for name, ops in FORM_ATTEMPTS.items()),
        *(MethodSpec(name, {"config": config}, grid=suites.LAMBDA_GRID, method="stride")
          for name, config in cheaper.items()),
        *(MethodSpec(name, {"config": config}, grid=WIDE_GRID, method="stride") for name, config in layers.items()),
    ]


def reseeded(spec: MethodSpec, seed: int) -> MethodSpec:
    """``spec`` with design and training seed ``seed`` (STRIDE attempts with a config only)."""
    config = spec.settings["config"].with_(design={"seed": seed}, training={"seed": seed})
    return MethodSpec(f"{spec.name}_s{seed}", {**spec.settings, "config": config}, grid=spec.grid, method=spec.method)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="a suite of suites.SUITES, e.g. pydoc-gpt or digits-mlp")
    ap.add_argument("--out", required=True, type=Path, help="the folder of that suite's `stride bench` run")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="comma-separated attempt names")
    ap.add_argument("--seeds", type=int, default=1, help="also run seeds 1..S-1 of each chosen STRIDE attempt")
    ap.add_argument("--resume", action="store_true", help="skip attempts OUT's report already has")
    ap.add_argument("--leave-out", type=int, nargs="?", const=0, metavar="M",
                    help="also the leave-out protocol, as the `stride bench --leave-out` run that made OUT")
    args = ap.parse_args()
    suite = suites.build(args.name, quick=args.quick)
    configs = {spec.name: spec.settings.get("config") for spec in suite.specs}
    base = next(c for name, c in configs.items() if name.startswith("stride_logit"))
    members = configs.get("stride_logit_members")
    first_layer = next((s.settings["configs"] for s in suite.specs if s.name == "stride_pre_activation"), None)
    chosen = [s for s in attempts(base, members, suite.task.n, first_layer) if not args.only or s.name in args.only.split(",")]
    chosen += [reseeded(s, seed) for s in chosen if "config" in s.settings for seed in range(1, args.seeds)]
    protocol = suites.with_leave_out(suite.protocol, args.quick, args.leave_out, None)
    run_benchmark(suite.task, chosen, args.out, protocol, removal=False, resume=args.resume)


if __name__ == "__main__":
    main()
