"""The README's Results section, generated from the benchmarks' JSON files in bench/results/.

Prints markdown: one table per result file that exists (quality, training, embedding, serving,
index), each with the machine and date it was measured on. `--write-readme` also replaces what
lies between `<!-- results:begin -->` and `<!-- results:end -->` in README.md.

    .venv/bin/python bench/report.py                 # print
    .venv/bin/python bench/report.py --write-readme  # and rewrite the README section
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import common

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _load(path: Path) -> dict | None:
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    if "date" not in results:  # a writer without the common header: the file's own date
        mtime = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
        results["date"] = mtime.isoformat(timespec="seconds")
    return results


def _section(title: str, results: dict, cols, rows, notes=()) -> str:
    table = common.markdown_table(cols, rows)
    parts = [f"### {title}", "", f"*{common.describe(results)}*", "", table]
    notes = [n for n in notes if n]
    if notes:
        parts += ["", *notes]
    return "\n".join(parts)


# ---------------------------------------------------------------- per result file


def quality(results: dict) -> str:
    """bench/quality.py's JSON: runs per (version, model, seed) and their summary."""
    import quality as quality_bench

    a = results["args"]
    pre = f"{a['pretrain_epochs']} epochs" if int(a["pretrain_epochs"]) > 0 else "not at all"
    note = (
        f"Test split of the {results.get('data_note', a['data'])}; mean ± std over seeds (each "
        f"seed re-trains the towers and the models). Hybrid configs {a['epochs']} epochs on "
        f"frozen tiny CLIP towers pre-trained {pre} by `clip-pretrain` (text/text view weight "
        f"{a['text_view_weight']}); sun2020-tiny {a['sun_epochs']} epochs end to end. "
        "FITB (query): the target-token query vs the 4 candidates; FITB (compat): the "
        "compatibility score of each completed outfit; recall@10 of the held-out item among "
        "all catalog items of its category. s/epoch on one CPU thread."
    )
    out = _section("Quality (synthetic catalog)", results, *quality_bench.table(results), [note])
    cols, rows = quality_bench.retrieval_table(results)
    if rows:
        out += "\n\n" + "\n".join([
            "Retrieval from descriptions, same runs: one item hidden from each test outfit and "
            "asked for by its own title, or by its last word (the noun) and one other word "
            "(\"leather boots\"), with no category (inferred by the model) or the category given; "
            "recall@10 of the hidden item over the whole catalog and the share of the top 10 in "
            "its category, beside a TF-IDF keyword search over titles on the same queries "
            "(`model.keyword`, the outfit ignored).",
            "",
            common.markdown_table(cols, rows),
        ])  # fmt: skip
    return out


def quality_amazon(results: dict) -> str:
    """bench/quality.py --amazon's JSON: the Sun et al. ablation on Amazon co-purchase pairs."""
    import quality_amazon as amazon_bench

    s = results["settings"]
    note = (
        f"Test split (`nondisjoint`: pairs split, products shared) of a {results['data_note']}; "
        f"each model trained {s['epochs']} epochs per run with `train_local.fit`, mean ± std "
        "over seeds. Pair AUC: each test co-purchase pair against one fixed negative (a random "
        "item of the complement's category not linked to the anchor); hit@k and MRR: the true "
        "complement among up to 20 items of its category. Unweighted: `loss.triplet_weighted="
        "false` (one margin for every pair); image-/text-only: `item.modalities` (the other "
        "branch fused as zeros). hybrid-tiny scores a pair as a two-item outfit, on frozen "
        "tiny CLIP towers at random init (no pre-trained weights here) and its word bag. "
        "s/run: wall seconds of training on this shared machine (load in the header). "
        f"Command: `{amazon_bench.COMMAND}`."
    )
    cols, rows = amazon_bench.table(results)
    return _section("Sun et al. 2020 ablation (synthetic Amazon co-purchase)", results, cols,
                    rows, [note])  # fmt: skip


def retrieval(results: dict) -> str:
    """bench/retrieval.py's JSON: retrieval from descriptions through `/v1/retrieve`."""
    import retrieval as retrieval_bench

    t, a = results["test"], results["args"]
    note = (
        f"{results['data_note']}, a seed no other benchmark or test uses; hybrid-tiny "
        f"{a['epochs']} epochs on towers pre-trained {a['pretrain_epochs']} epochs, loaded as a "
        "Serve replica loads it and asked through the serving app's `/v1/retrieve` "
        f"({t['n_recall']} test outfits, one item hidden each, k = 10, whole catalog). Keyword: "
        "TF-IDF over titles, same queries. Same model on the test split: compatibility AUC "
        f"{t['compatibility_auc']:.3f}, FITB (query) {t['fitb_accuracy']:.3f}, FITB (compat) "
        f"{t['fitb_accuracy_compat']:.3f}. Command: `{retrieval_bench.COMMAND}`."
    )
    cols, rows = retrieval_bench.table(results)
    return _section("Retrieval from descriptions, through the API", results, cols, rows, [note])


def training(results: dict) -> str:
    import train_throughput

    a = results["args"]
    note = (
        f"hybrid-tiny on {a['outfits']} synthetic outfits, batch {a['batch_size']} per worker; "
        f"`÷ bare 1` = rate / the bare loop on one thread (the limit per CPU), so 2 workers "
        f"would ideally read 2.00×. `input build` = share of the bare step spent building inputs "
        f"(feature lookup, or JPEG decode + tokenise). `wall s` = the whole Ray run (worker "
        f"start, {a['epochs']} / {a['e2e_epochs']} epochs with validation and checkpoints). "
        f"DDP steps wait for the slower worker, so on a shared machine the 2-worker figure swings "
        f"most with other jobs' load (the `load` column: 1-minute load average at the start)."
    )
    return _section("Training throughput", results, *train_throughput.table(results), [note])


def embedding(results: dict) -> str:
    import embed_throughput

    note = (
        f"{results['items']:,} catalog items, batch {results['args']['batch_size']}; "
        f"{embed_throughput.stage_line(results)}."
    )
    return _section("Embedding throughput", results, *embed_throughput.table(results), [note])


def serving(results: dict) -> str:
    """bench/serve_load.py's JSON, its acceptance checks, and the burst plot if recorded."""
    import serve_load

    a = results["args"]
    bare = ", ".join(f"{k} {v:,.0f}" for k, v in results.get("bare_model", {}).items())
    work = results.get("work_per_request", {})
    notes = [
        f"Fixed windows of {a['window']:g} s per level after {a['warmup']:g} s of warm-up, "
        f"127.0.0.1; `serve-N` held at N replicas of 1 CPU, `uvicorn-N` = "
        f"`uvicorn --workers N`. `÷ bare` = model inputs served per second (a compatibility "
        f"request scores {work.get('/v1/compatibility', 0):.1f} outfits on average) / the bare "
        f"model's batch-32 rate ({bare}). CPU = core-seconds per second of each process group "
        "and of the load generator (the machine has 2 cores: the generator takes a share of "
        "them). `load` = the 1-minute load average at the end of the window (other jobs).",
        _done_when(results.get("done_when") or {}),
        _burst(),
        _flags(),
    ]
    notes = ["\n\n".join(n for n in notes if n)]  # paragraphs, not one run-on line
    return _section("Serving load", results, *serve_load.table(results), notes)


def _done_when(checks: dict) -> str:
    if not checks:
        return ""
    lines = []
    for target, c in checks.items():
        lines.append(
            f"`{target}` against one uvicorn process (issue 15's targets in brackets): "
            f"`/v1/compatibility` at c=32 {c['compat_c32_serve_over_uvicorn']:.2f}× its req/s "
            f"(≥ 1.0) with p99/p50 {c['compat_c32_serve_p99_over_p50']:.2f} (≤ 2); at c=1 p50 "
            f"{c['compat_c1_serve_p50_over_uvicorn']:.2f}× its p50 (≤ 2); `/v1/retrieve` at "
            f"c=32 {c['retrieve_c32_serve_over_uvicorn']:.2f}× its req/s (≥ 0.8)."
        )
    return "\n\n".join(lines)


def _burst() -> str:
    """The autoscaling burst of serve_load_burst.json as a plot (written next to it)."""
    results = _load(common.RESULTS / "serve_load_burst.json")
    if results is None:
        return ""
    png = common.RESULTS / "serve_load_burst.png"
    plot_burst(results, png)
    phases = ", ".join(f"{p['seconds']:g} s at c={p['concurrency']}" for p in results["phases"])
    scaling = results.get("autoscaling_config") or {}
    return (
        f"Autoscaling burst ({common.describe(results)}): {phases} on `/v1/compatibility`, "
        f"autoscaling {scaling.get('min_replicas')}..{scaling.get('max_replicas')} replicas "
        f"(target {scaling.get('target_ongoing_requests')} ongoing, upscale delay "
        f"{scaling.get('upscale_delay_s')} s, downscale delay {scaling.get('downscale_delay_s')} "
        f"s): replicas up to {results['max_replicas_seen']}, {results['final_replicas']} at the "
        f"end; {results['ok']:,} answers, {results['failed']} failed, model versions "
        f"{sorted(results['versions'])}.\n\n![replicas and req/s during the burst]"
        f"(bench/results/{png.name})"
    )


def plot_burst(results: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = results["samples"]
    t = [s["t"] for s in samples]
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    ax.plot(t, [s["rps"] for s in samples], color="tab:blue", label="req/s (answered)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("req/s", color="tab:blue")
    ax2 = ax.twinx()
    ax2.step(t, [s["replicas"] for s in samples], where="post", color="tab:red", label="replicas")
    ax2.step(t, [s["concurrency"] for s in samples], where="post", color="tab:gray",
             linestyle=":", label="clients")  # fmt: skip
    ax2.set_ylabel("replicas (red), clients (dotted)")
    ax2.set_yscale("symlog", linthresh=2)
    ax.set_title("Autoscaling burst: serve_configs/local.yaml, 2-CPU machine")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def _flags() -> str:
    """serve_load_flags.json: Ray Serve's lower-overhead paths, measured."""
    import serve_load

    results = _load(common.RESULTS / "serve_load_flags.json")
    if results is None:
        return ""
    cols, rows = serve_load.table(results)
    return (
        f"Ray Serve's lower-overhead paths, same windows ({common.describe(results)}; "
        "`bench/serve_load.py --flags --no-burst`):\n\n" + common.markdown_table(cols, rows)
    )


def index(results: dict) -> str:
    import index as index_bench

    a = results["args"]
    note = (
        f"Clustered unit vectors; {a['queries']} queries per batch, {a['single']} one at a time, "
        f"{a['platform_queries']} through `CatalogIndex.search`; faiss "
        f"{results.get('faiss', {}).get('version', '?')}, search threads {a['search_threads']}, "
        f"build threads {a['build_threads'] or 'all'}. Recall@{a['k']} against flat (exact), "
        "on queries the build never saw."
    )
    if "target_recall" in a:
        note += (
            f" IVF nprobe and HNSW efSearch are the platform's own choice: raised at build time "
            f"until recall@{a['k']} reaches {a['target_recall']} on {a['calibration_queries']} "
            "held-out calibration queries (`IndexConfig.target_recall`; `calibration`: the "
            "recall measured there); IVF nlist = 4 √n up to 1024."
        )
    return _section("faiss index kinds", results, *index_bench.table(results), [note])


def scale(results: dict) -> str:
    """bench/scale.py's JSON: every stage's wall time and peak memory per catalog size."""
    import scale as scale_bench

    a = results["args"]
    png = common.RESULTS / "scale.png"
    scale_bench.plot(results, png)
    note = (
        f"Each stage is the README's command as its own process, on a fresh synthetic catalog: "
        f"clip-pretrain {a['clip_steps']} steps, `embed` on Ray Data (cold cache), `train` "
        f"hybrid-tiny {a['workers']} workers {a['epochs']} epochs (reusing the embedding), "
        "`evaluate --split test`, `index build`, `serve` (start-up to the first answer of "
        "`/v1/model`, then one request of each kind). GiB: the peak of PSS summed over the "
        "command's process tree (Ray's processes included). `bench/scale.py`."
    )
    parts = [_section("Scale: cost per stage as the catalog grows", results,
                      *scale_bench.table(results), [note])]  # fmt: skip
    requests = [
        f"{r['outfits']:,} outfits: " + ", ".join(
            f"{k} {v:,.0f} ms" for k, v in r["stages"]["serve"].get("requests_ms", {}).items()
        ) + f"; replica {r['stages']['serve'].get('replica_gib', float('nan')):.2f} GiB"
        for r in results["sizes"] if "serve" in r["stages"]
    ]  # fmt: skip
    if requests:
        parts.append("Served catalog, one request of each kind: " + "; ".join(requests) + ".")
    separate = [
        f"{r['outfits']:,} outfits: measured in its own run, {r['measured']['date'][:16]} UTC, "
        f"at {r['measured']['commit']}"
        for r in results["sizes"] if "measured" in r
    ]  # fmt: skip
    if separate:
        parts.append("Rows not from the run dated above: " + "; ".join(separate) + ".")
    parts.append(f"![wall time and peak memory per stage](bench/results/{png.name})")
    return "\n\n".join(parts)


SECTIONS: list[tuple[tuple[str, ...], Callable[[dict], str]]] = [
    (("quality.json",), quality),
    (("quality_amazon.json",), quality_amazon),
    (("retrieval.json",), retrieval),
    (("train_throughput.json",), training),
    (("embed_throughput.json",), embedding),
    (("serve_load.json",), serving),
    (("index.json",), index),
    (("scale.json",), scale),
]


# ---------------------------------------------------------------- on a GPU (bench/gpu_check.sh)


def serving_gpu(results: dict) -> str:
    """bench/serve_gpu.py's JSON: the same Serve app with replicas on the GPU and on the CPU."""
    import serve_load

    a = results["args"]
    note = (
        f"serve_configs/local.yaml, {a['replicas']} replicas, `device: auto` with "
        f"{a['gpu_per_replica']:g} GPU each vs `device: cpu`; windows of {a['window']:g} s after "
        f"{a['warmup']:g} s of warm-up, same requests and columns as the CPU serving table."
    )
    return _section("Serving with `device: auto`", results, *serve_load.table(results), [note])


# The result files bench/gpu_check.sh writes, in the order they are rendered.
GPU_FILES: dict[str, Callable[[dict], str]] = {
    "train_throughput-gpu.json": training,
    "embed_throughput-gpu.json": embedding,
    "serve_load-gpu.json": serving_gpu,
    "index-gpu.json": index,
    "index_cpu-gpu.json": index,
}


def _device_title(section: str, results: dict) -> str:
    """A section's title with the device its figures were measured on."""
    machine = results.get("machine", {})
    if machine.get("device") == "cuda":
        where = f"on GPU: {machine.get('device_name', '?')} x {machine.get('gpus', 1)}"
    else:
        where = f"on the CPUs of the GPU host ({machine.get('cpus', '?')} CPUs)"
    title, rest = section.split("\n", 1)
    return f"{title}, {where}\n{rest}"


def gpu_sections(results_dir: Path) -> list[str]:
    """The `*-gpu.json` sections, or one line saying none were measured yet."""
    parts = []
    for name, section in GPU_FILES.items():
        results = _load(results_dir / name)
        if results is not None:
            parts.append(_device_title(section(results), results))
    if not parts:
        return [
            "### On a GPU\n\nNo GPU figures yet: no GPU machine has run the device check. "
            "`bash bench/gpu_check.sh` on one writes `bench/results/*-gpu.json` (rendered here)."
        ]
    return ["### On a GPU\n\nMeasured by `bash bench/gpu_check.sh`.", *parts]


def render(results_dir: Path) -> str:
    """The markdown of every result file present in `results_dir`."""
    parts = [
        "(generated by `python bench/report.py --write-readme` from `bench/results/*.json`; "
        "how to run each benchmark: [bench/README.md](bench/README.md))"
    ]
    for names, section in SECTIONS:
        for name in names:
            results = _load(results_dir / name)
            if results is not None:
                parts.append(section(results))
                break
    parts += gpu_sections(results_dir)
    return "\n\n".join(parts)


def write_readme(readme: Path, markdown: str) -> None:
    text = readme.read_text()
    if BEGIN not in text or END not in text or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"{readme} needs the markers {BEGIN} and {END}, in that order")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{markdown}\n{END}{tail}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=common.RESULTS)
    p.add_argument("--readme", type=Path, default=common.ROOT / "README.md")
    p.add_argument("--write-readme", action="store_true", help="rewrite the README section")
    args = p.parse_args(argv)
    markdown = render(args.results)
    print(markdown)
    if args.write_readme:
        write_readme(args.readme, markdown)
        print(f"\nwrote the results section of {args.readme}", file=sys.stderr)


if __name__ == "__main__":
    main()
