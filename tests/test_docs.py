"""The README and docs/: links and anchors resolve, the README stays short, and the numbers
docs/results-tiny.md quotes are the committed tables' values, rounded as printed."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
RESULTS = ROOT / "results" / "tiny"
HEADLINES = ROOT / "results" / "robustness" / "tiny" / "headlines.csv"
MINUS = "\u2212"

# ---------------------------------------------------------------------------------------------------------------
# Markdown helpers


def _outside_fences(text: str) -> list[str]:
    """The lines of ``text`` that are not inside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: the rendered text lowercased, punctuation but ``-`` and ``_`` dropped,
    spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links -> their text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _outside_fences(path.read_text(encoding="utf-8")):
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = github_anchor(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    found = []
    for line in _outside_fences(path.read_text(encoding="utf-8")):
        line = re.sub(r"``[^`]+``|`[^`]+`", "code", line)  # inline code is not a link
        found += re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", line)
    return found


def md_table(text: str, header_start: str) -> tuple[list[str], list[list[str]]]:
    """The Markdown table whose header row starts with ``header_start``: its header and body cells."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(header_start):
            rows = []
            for body in lines[i + 2 :]:
                if not body.startswith("|"):
                    break
                rows.append([c.strip() for c in body.strip().strip("|").split("|")])
            return [c.strip() for c in line.strip().strip("|").split("|")], rows
    raise AssertionError(f"no table with header {header_start!r}")


# ---------------------------------------------------------------------------------------------------------------
# Links, anchors, length


def test_github_anchor_matches_githubs_rule():
    assert github_anchor("Noise floor (`make robustness`)") == "noise-floor-make-robustness"
    assert github_anchor("GPU checks (`benchmarks/gpu_checks.py`)") == "gpu-checks-benchmarksgpu_checkspy"
    assert github_anchor("Measured at 7B widths (`make bench` -> `x.py`)") == "measured-at-7b-widths-make-bench---xpy"
    assert github_anchor("Tiny's compute budget") == "tinys-compute-budget"


def test_the_readme_is_at_most_400_lines():
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= 400, f"README.md has {n} lines"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(ROOT / "README.md") if not t.startswith("#")}
    missing = [p.name for p in DOCS.glob("*.md") if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_the_link_checker_finds_a_broken_anchor(tmp_path):
    (tmp_path / "a.md").write_text("# A\n\n## Real heading\n\n[x](#real-heading) [y](b.md#gone) [z](c.md)\n")
    (tmp_path / "b.md").write_text("# B\n\n```\n# gone\n```\n")
    targets = links(tmp_path / "a.md")
    assert targets == ["#real-heading", "b.md#gone", "c.md"]
    assert "real-heading" in anchors(tmp_path / "a.md")
    assert "gone" not in anchors(tmp_path / "b.md")  # a comment in a code block is no heading


# ---------------------------------------------------------------------------------------------------------------
# The numbers docs/results-tiny.md quotes, against the committed tables


def _m(s: str) -> str:
    return s.replace("-", MINUS)


def signed(v: float, nd: int) -> str:
    return _m(f"{v:+.{nd}f}")


def fixed(v: float, nd: int) -> str:
    return _m(f"{v:.{nd}f}")


def sci(v: float) -> str:
    """1.7274e-08 -> '1.7e-8', as the results page prints small p-values."""
    mantissa, exponent = f"{v:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def p_value(v: float) -> str:
    """Two significant digits, trailing zeros kept (0.0050); below 1e-3 in e-notation."""
    return sci(v) if v < 1e-3 else f"{v:#.2g}"


@pytest.fixture(scope="module")
def results_page() -> str:
    return (DOCS / "results-tiny.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def headlines() -> pd.DataFrame:
    return pd.read_csv(HEADLINES).set_index("headline")


def test_the_noise_floor_table_quotes_headlines_csv(results_page, headlines):
    h = headlines
    cols = ["main", "seed_1", "seed_2"]

    def each(name, fmt):
        return [fmt(h.loc[name, c]) for c in cols]

    def pair(a, b, fmt, sep=" / "):
        return [fmt(h.loc[a, c]) + sep + fmt(h.loc[b, c]) for c in cols]

    def with_p(effect, p, fmts):
        return [f"{signed(h.loc[effect, c], 3)} ({f(h.loc[p, c])})" for c, f in zip(cols, fmts, strict=True)]

    pct0 = lambda v: f"{v:.0f}%"  # noqa: E731
    pct1s = lambda v: signed(v, 1) + "%"  # noqa: E731
    floor = lambda name, nd: fixed(h.loc[name, "floor"], nd)  # noqa: E731
    two_dp = lambda v: f"{v:.2f}"  # noqa: E731
    expected = {
        "base model final training loss": (
            each("base_final_loss", lambda v: f"{v:.4f}"),
            floor("base_final_loss", 4),
        ),
        "base greedy accuracy, in-domain / out-of-domain": (
            pair("base_greedy_acc_id", "base_greedy_acc_ood", pct0),
            f"{floor('base_greedy_acc_id', 0)} / {floor('base_greedy_acc_ood', 0)} points",
        ),
        "J = 50 completeness error (median)": (
            [
                f"{h.loc['ig_completeness_error_sensitivity_j', c]:.{nd}f}%"
                for c, nd in zip(cols, [1, 1, 3], strict=True)
            ],
            floor("ig_completeness_error_sensitivity_j", 1) + " points",
        ),
        "important share of segments": (
            each("important_segment_share", lambda v: f"{v:.1f}%"),
            floor("important_segment_share", 1) + " points",
        ),
        "Δ gap within traces": (
            each("delta_trace_difference", lambda v: signed(v, 3)),
            floor("delta_trace_difference", 3),
        ),
        "entropy difference within traces (Holm p)": (
            with_p("entropy_trace_difference", "entropy_trace_p_holm", [sci, sci, sci]),
            floor("entropy_trace_difference", 3),
        ),
        "log-perplexity difference (Holm p)": (
            with_p(
                "log_ppl_trace_difference",
                "log_ppl_trace_p_holm",
                [two_dp, two_dp, lambda v: f"{v:.3f}"],
            ),
            floor("log_ppl_trace_difference", 3),
        ),
        "BLEU difference (Holm p)": (
            with_p(
                "bleu_trace_difference",
                "bleu_trace_p_holm",
                [two_dp, lambda v: f"{v:.3f}", lambda v: f"{v:.4f}"],
            ),
            floor("bleu_trace_difference", 3),
        ),
        "CDF share, correct traces (averaged curve)": (
            each("cdf_share_correct", pct0),
            floor("cdf_share_correct", 0) + " points",
        ),
        "judged truncated, unimportant − important": (
            each("judge_truncated_difference", lambda v: f"{v:.1f} pp"),
            floor("judge_truncated_difference", 1) + " pp",
        ),
        "judge precision": (each("judge_precision", two_dp), floor("judge_precision", 2)),
        "Table 1 self: greedy acc. / pass@1 change": (
            pair("table1_greedy_acc_change_self", "table1_pass1_change_self", pct1s),
            f"{floor('table1_greedy_acc_change_self', 1)} / {floor('table1_pass1_change_self', 1)} points",
        ),
        "Table 1 self: greedy / sampled length change": (
            pair("table1_greedy_tokens_change_self", "table1_sample_tokens_change_self", pct1s),
            f"{floor('table1_greedy_tokens_change_self', 1)} / {floor('table1_sample_tokens_change_self', 1)} points",
        ),
        "Table 1 reference: greedy acc. change (bootstrap p)": (
            [
                f"{pct1s(h.loc['table1_greedy_acc_change_reference', c])} "
                f"({h.loc['table1_greedy_acc_p_reference', c]:.2f})"
                for c in cols
            ],
            floor("table1_greedy_acc_change_reference", 1) + " points",
        ),
        "Table 1 reference: pass@1 change": (
            each("table1_pass1_change_reference", pct1s),
            floor("table1_pass1_change_reference", 1) + " points",
        ),
        "Table 1 reference: greedy / sampled length change": (
            pair("table1_greedy_tokens_change_reference", "table1_sample_tokens_change_reference", pct1s),
            f"{floor('table1_greedy_tokens_change_reference', 1)} / "
            f"{floor('table1_sample_tokens_change_reference', 1)} points",
        ),
        "Fig. 5: best τ / β by pass@1": (
            pair("fig5_best_tau", "fig5_best_beta", lambda v: f"{v:.1f}"),
            f"{floor('fig5_best_tau', 1)} / {floor('fig5_best_beta', 1)}",
        ),
    }
    header, rows = md_table(results_page, "| headline | seed 0 | seed 1 | seed 2 | floor |")
    by_label = {r[0]: r for r in rows}
    wrong = []
    for label, (values, floor_cell) in expected.items():
        assert label in by_label, f"the floor table lost its row {label!r}"
        got = by_label[label][1:5]
        if got != [*values, floor_cell]:
            wrong.append(f"{label}: doc {got}, tables {[*values, floor_cell]}")
    # Tables 2 and 3: "ours − best other row" leads each cell
    for table in ("2", "3"):
        row = by_label[f"Table {table}: ours − best other row (best row)"]
        name = f"table{table}_ours_minus_best_other"
        want = [signed(h.loc[name, c], 1) for c in cols] + [fixed(h.loc[name, "floor"], 1) + " points"]
        got = [row[1].split(" (")[0], row[2].split(" (")[0], row[3].split(" (")[0], row[4]]
        if got != want:
            wrong.append(f"Table {table}: doc {got}, tables {want}")
    assert not wrong, "\n".join(wrong)


def test_table1_quotes_table1_csv(results_page):
    csv = pd.read_csv(RESULTS / "tables" / "table1.csv", dtype=str, keep_default_na=False)
    header, rows = md_table(results_page, "| Decoding | Source | Method |")
    assert len(rows) == len(csv)
    for row, (_, want) in zip(rows, csv.iterrows(), strict=True):
        assert row == [want[c] for c in header], f"Table 1 row {row[:3]}"


def test_table1_paired_tests_quote_their_csv(results_page):
    tests = pd.read_csv(RESULTS / "tables" / "table1_paired_tests.csv")
    table1 = pd.read_csv(RESULTS / "tables" / "table1.csv", dtype=str, keep_default_na=False)
    metric = {
        "greedy accuracy": ("greedy_acc", "greedy", "vs full: acc."),
        "sampled pass@1": ("pass@1", "sampling", "vs full: acc."),
        "greedy length (tokens)": ("greedy_tokens", "greedy", "vs full: length"),
        "greedy length": ("greedy_tokens", "greedy", "vs full: length"),
        "sampled length": ("sample_tokens", "sampling", "vs full: length"),
    }

    def p(v: float) -> str:
        return "< 1e-4" if v == 0 else f"{v:.2g}"

    _, rows = md_table(results_page, "| source | metric | selective − full [95% CI] |")
    assert len(rows) == 8
    for source, name, diff, change, p_boot, p_holm in rows:
        key, decoding, change_col = metric[name]
        t = tests[(tests["a"] == f"full__{source}") & (tests["metric"] == key)].iloc[0]
        ci = f"{signed(t.bootstrap_difference, 1)} [{signed(t.bootstrap_ci_low, 1)}, {signed(t.bootstrap_ci_high, 1)}]"
        assert diff == ci, (source, name)
        assert (p_boot, p_holm) == (p(t.bootstrap_p), p(t.bootstrap_p_holm)), (source, name)
        t1 = table1[
            (table1["Decoding"] == decoding)
            & (table1["Source"] == source)
            & (table1["Method"] == "Segment Selective SFT")
        ].iloc[0]
        assert change == _m(t1[change_col]), (source, name)


def test_faithfulness_table_quotes_its_csvs(results_page):
    d = RESULTS / "06_distribution_position"
    tests = pd.read_csv(d / "faithfulness_tests.csv").set_index(["metric", "ordering"])
    summary = pd.read_csv(d / "faithfulness_summary.csv").set_index("ordering")
    code = {
        "IG strength (ours)": "ig",
        "confidence gain": "confidence",
        "segment entropy": "entropy",
        "random": "random",
        "longest first": "length",
        "segment perplexity": "perplexity",
        "ground-truth kinds, productive first": "oracle",
    }
    _, rows = md_table(results_page, "| ordering | deletion area (median, nats) |")
    assert [r[0] for r in rows] == list(code)
    for label, dele, ins, d_ci, d_p, i_ci, i_p in rows:
        o = code[label]
        assert (dele, ins) == (
            fixed(summary.loc[o, "deletion_area_median"], 2),
            fixed(summary.loc[o, "insertion_area_median"], 2),
        ), label
        if o == "ig":
            continue
        for metric, ci_cell, p_cell in (("deletion_area", d_ci, d_p), ("insertion_area", i_ci, i_p)):
            t = tests.loc[(metric, o)]
            want = f"{signed(t.mean_difference, 2)} [{signed(t.ci_low, 2)}, {signed(t.ci_high, 2)}]"
            assert (ci_cell, p_cell) == (want, p_value(t.p_holm)), (label, metric)


def test_base_model_table_and_run_times_quote_their_csvs(results_page):
    base = pd.read_csv(RESULTS / "00_world" / "base_eval.csv").set_index("suite")
    _, rows = md_table(results_page, "| suite | questions | greedy accuracy | mean output tokens |")
    for row in rows:
        suite = re.search(r"`(test_\w+)`", row[0]).group(1)
        b = base.loc[suite]
        assert row[1:] == [str(int(b.questions)), f"{100 * b.accuracy:.0f}%", f"{b.mean_tokens:.0f}"], suite

    times = pd.read_csv(RESULTS / "run_times.csv")
    quoted = re.search(r"run_times\.csv`: notebook (.*?)\)", results_page, flags=re.S).group(1)
    pairs = re.findall(r"(\d\d) (\d+\.\d)", quoted.replace("\n", " "))
    minutes = {n[:2]: f"{s / 60:.1f}" for n, s in zip(times.notebook, times.wall_seconds, strict=True)}
    assert dict(pairs) == minutes


def test_tau_search_gaps_quote_tau_search_csv(results_page):
    tau = pd.read_csv(RESULTS / "04_confidence_delta" / "tau_search.csv")
    sentence = re.search(r"the gap rises steadily as τ falls \((.*?)\)", results_page, flags=re.S).group(1)
    quoted = dict((t, g) for g, t in re.findall(r"(\d\.\d{3}) at (\d\.\d)", sentence.replace("\n", " ")))
    assert len(quoted) == 5
    for t, g in quoted.items():
        row = tau[(tau["tau"].round(2) == float(t)) & (tau["beta"] == 0.95)].iloc[0]
        assert g == f"{row.gap:.3f}", t
    best = tau.loc[tau["gap"].idxmax()]
    assert f"**τ* = {best.tau:.1f}** (largest Δ gap, {best.gap:.3f})" in results_page
    assert not math.isnan(best.gap)
