"""The paper's findings, in one home, and the relations a run is checked against.

Table 2 gives absolute RMS on the paper's own FLIR ONE pairs, which are not public: a run
on other data cannot be compared with those values. What carries over are relations
within one run (same model, same test images): how much the 3x3 Gaussian lowers TN's RMS
(the GS gain), whether Gatys' style reconstruction raises it, whether TN's output holds
more high-frequency energy than the real IR (Sec. 5.1), and the order of the classes.
tools/fidelity.py turns these into the register's `result` rows, tools/evaluate.py
writes them into eval.json and table2.md, tools/ablate.py puts them beside every arm.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

# Table 2 of Kniaz et al. 2017: (TN, TN + PP, TN + GS) average RMS per object class.
PAPER_TABLE2 = {
    "human": (9.1, 31.9, 7.5),
    "microwave_oven": (37.8, 60.4, 29.2),
    "computer": (16.7, 36.5, 13.5),
}
OVERALL = "overall"

# Result statuses (the register's `result` rows; claims and assumptions keep PASS/FAIL/...).
REPRODUCED, NOT_REPRODUCED, NOT_RUN, NOT_COMPARABLE = "REPRODUCED", "NOT REPRODUCED", "NOT RUN", "NOT COMPARABLE"
STATUSES = (REPRODUCED, NOT_REPRODUCED, NOT_RUN, NOT_COMPARABLE)

# Tolerances, fixed before any run was scored against them. The paper's GS gains are
# 17.6 / 22.8 / 19.2 %: a run reproduces them when every class gains 10..30 %. Style
# reconstruction made every class worse (1.6x..3.5x): TN + PP above TN in every class.
# Sec. 5.1: components "absent on [the] original": TN's high-frequency measure above the
# real IR's (ratio > 1) in every class.
GS_GAIN_RANGE = (10.0, 30.0)
PP_RATIO_MIN = 1.0
HF_RATIO_MIN = 1.0
PAPER_FINAL_LOSS = "0.5%"


def gs_gain_percent(tn: Optional[float], tn_gs: Optional[float]) -> Optional[float]:
    """How much TN + GS lowers TN's RMS, in percent of TN's (positive: the Gaussian helps)."""
    if tn is None or tn_gs is None or not tn > 0:
        return None
    return 100.0 * (tn - tn_gs) / tn


def ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
    if num is None or den is None or not den > 0:
        return None
    return num / den


PAPER_GS_GAIN = {c: gs_gain_percent(v[0], v[2]) for c, v in PAPER_TABLE2.items()}
PAPER_PP_RATIO = {c: ratio(v[1], v[0]) for c, v in PAPER_TABLE2.items()}
PAPER_CLASS_ORDER = tuple(sorted(PAPER_TABLE2, key=lambda c: PAPER_TABLE2[c][0]))   # lowest TN RMS first


def scored_classes(table: Sequence[Dict]) -> List[str]:
    """The paper's classes a table has images of; else its overall row (data without the paper's classes)."""
    present = {r["object_class"] for r in table if r.get("n")}
    classes = [c for c in PAPER_TABLE2 if c in present]
    return classes or ([OVERALL] if OVERALL in present else [])


def relations(table: Sequence[Dict]) -> Dict:
    """Per class (and overall) of an evaluation table: GS gain %, TN + PP / TN, high-frequency ratio TN / real IR.

    `table` rows are tools.evaluate's (object_class, n, tn, tn_gs, tn_pp, tn_hf, ir_hf, ...).
    """
    out: Dict[str, Dict] = {}
    for r in table:
        out[r["object_class"]] = {
            "gs_gain_percent": gs_gain_percent(r.get("tn"), r.get("tn_gs")),
            "pp_ratio": ratio(r.get("tn_pp"), r.get("tn")),
            "hf_ratio": ratio(r.get("tn_hf"), r.get("ir_hf")),
            "pp_hf_ratio": ratio(r.get("tn_pp_hf"), r.get("ir_hf")),
        }
    return out


def _judge(values: Dict[str, Optional[float]], ok) -> str:
    if not values or any(v is None for v in values.values()):
        return NOT_RUN
    return REPRODUCED if all(ok(v) for v in values.values()) else NOT_REPRODUCED


def verdicts(table: Sequence[Dict]) -> Dict[str, Dict]:
    """{finding: {"status", "values" (per scored class), "classes"}} for the relations a run can show.

    gs_gain: every scored class gains GS_GAIN_RANGE; hf: hf_ratio > HF_RATIO_MIN in every
    class; pp: TN + PP / TN > PP_RATIO_MIN in every class; pp_hf: TN + PP keeps more
    high-frequency energy than the real IR (the reconstruction "failed to imitate the
    smoothness"); class_order: TN's RMS orders the paper's three classes as Table 2 does.
    """
    rel = relations(table)
    classes = scored_classes(table)
    pick = lambda key: {c: rel[c][key] for c in classes}                      # noqa: E731
    lo, hi = GS_GAIN_RANGE
    out = {
        "gs_gain": {"values": pick("gs_gain_percent"), "status": _judge(pick("gs_gain_percent"),
                                                                        lambda v: lo <= v <= hi)},
        "hf": {"values": pick("hf_ratio"), "status": _judge(pick("hf_ratio"), lambda v: v > HF_RATIO_MIN)},
        "pp": {"values": pick("pp_ratio"), "status": _judge(pick("pp_ratio"), lambda v: v > PP_RATIO_MIN)},
        "pp_hf": {"values": pick("pp_hf_ratio"), "status": _judge(pick("pp_hf_ratio"), lambda v: v > HF_RATIO_MIN)},
    }
    tn = {r["object_class"]: r.get("tn") for r in table if r.get("n")}
    if all(tn.get(c) is not None for c in PAPER_CLASS_ORDER):
        order = tuple(sorted(PAPER_CLASS_ORDER, key=lambda c: tn[c]))
        out["class_order"] = {"values": {c: tn[c] for c in order},
                              "status": REPRODUCED if order == PAPER_CLASS_ORDER else NOT_REPRODUCED}
    else:
        out["class_order"] = {"values": {}, "status": NOT_RUN}
    for v in out.values():
        v["classes"] = classes
    return out
