"""What the demo shows: real HTTP requests to every endpoint, and `demo_results.png`.

Both are built from the first test-split FITB question of the catalog, so a re-run shows the same
outfit; the picture shows how the model answers it, right or wrong.
"""

from __future__ import annotations

from pathlib import Path


def typed_description(title: str) -> str:
    """The blank's title as a user would type it: its last word (the noun) and one other."""
    import numpy as np

    from outfitter.model.evaluate import short_description

    return short_description(title, np.random.default_rng(0))


def requests(url: str, data: Path) -> dict:
    """A few real requests to every endpoint, built from a test-split FITB question."""
    import base64
    import json

    import httpx

    from outfitter.data import load_catalog, load_split

    catalog = load_catalog(data)
    test = load_split(data, "nondisjoint", "test", catalog)
    q = next(q for q in test.fitb if len(q.question) >= 2)
    right, wrong = q.answers[q.correct], q.answers[(q.correct + 1) % len(q.answers)]
    item = catalog.items[right]
    typed = typed_description(item.title)
    ref = lambda ids: [{"item_id": i} for i in ids]  # noqa: E731
    image_b64 = base64.b64encode(catalog.image_path(right).read_bytes()).decode()
    calls = [
        ("GET /healthz", "get", "/healthz", None),
        ("GET /v1/model", "get", "/v1/model", None),
        ("GET /v1/items?category=shoes&limit=3", "get", "/v1/items?category=shoes&limit=3", None),
        (
            "POST /v1/compatibility (a test outfit)",
            "post",
            "/v1/compatibility",
            {"items": ref([*q.question, right])},
        ),
        (
            "POST /v1/compatibility (one item swapped for a clash)",
            "post",
            "/v1/compatibility",
            {"items": ref([*q.question, wrong])},
        ),
        (
            f'POST /v1/retrieve ("{typed}", no category: the model infers it)',
            "post",
            "/v1/retrieve",
            {"items": ref(q.question), "target": {"description": typed}, "k": 5},
        ),
        (
            "POST /v1/complete (two blanks)",
            "post",
            "/v1/complete",
            {
                "items": ref(q.question[:1]),
                "k": 3,
                "targets": [
                    {"description": item.title},
                    {"description": catalog.items[q.question[1]].title},
                ],
            },
        ),
        (
            "POST /v1/compatibility (a new item, not in the catalog)",
            "post",
            "/v1/compatibility",
            {
                "items": [
                    *ref(q.question),
                    {"title": item.title, "description": item.description, "image_b64": image_b64},
                ]
            },
        ),
    ]
    raw, printed = {}, []
    with httpx.Client(base_url=url, timeout=120) as client:

        def call(name, method, path, body):
            response = client.request(method.upper(), path, json=body)
            if response.status_code != 200:
                raise RuntimeError(f"{name} answered {response.status_code}: {response.text[:300]}")
            return response.json()

        for name, method, path, body in calls:
            raw[name] = call(name, method, path, body)
            printed.append((name, _compact(json.dumps(raw[name], indent=1))))
        # The FITB question as the model answers it: each candidate completes the outfit.
        candidates = [
            (
                a,
                call("FITB", "post", "/v1/compatibility", {"items": ref([*q.question, a])})[
                    "score"
                ],
            )
            for a in q.answers
        ]
        printed.append(
            (
                "POST /v1/compatibility x4 (the FITB question's candidates)",
                "\n".join(
                    f"{catalog.items[a].title:<40} {score:.3f}{'  <- true' if a == right else ''}"
                    for a, score in candidates
                ),
            )
        )
        image = client.get(f"/v1/items/{right}/image")
        printed.append(
            (
                f"GET /v1/items/{right}/image",
                f"{image.status_code} {image.headers.get('content-type')} "
                f"{len(image.content)} bytes",
            )
        )
    return {
        "raw": raw,
        "printed": printed,
        "question": q,
        "right": right,
        "wrong": wrong,
        "candidates": candidates,
    }


def _compact(text: str, limit: int = 900) -> str:
    return text if len(text) <= limit else text[:limit] + " …"


def picture(data: Path, responses: dict, out: Path) -> Path:
    """A test FITB question as the model answers it, and the items retrieved for the blank."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from outfitter.data import load_catalog
    from outfitter.data.images import load_image

    catalog = load_catalog(data)
    q, right = responses["question"], responses["right"]
    candidates = responses["candidates"]  # [(item id, score of the completed outfit)]
    pick = max(candidates, key=lambda c: c[1])[0]
    answer = list(responses["raw"].values())[5]
    retrieved, category = answer["items"], answer["category"]
    wanted = catalog.items[right]
    inferred = (
        f"inferred {category['name']}, {100 * category['confidence']:.0f} %"
        if category["inferred"]
        else category["name"]
    )
    searched = category["searched"] or "the whole catalog"
    verdict = "right" if pick == right else "wrong"
    rows = [
        (list(q.question), "the outfit so far", {}, {}),
        (
            [a for a, _ in candidates],
            f"fill in the blank: each candidate's outfit score (the model picks the highest: "
            f"{verdict})",
            {right: "green", **({pick: "red"} if pick != right else {})},
            {a: f"{score:.3f}" for a, score in candidates},
        ),
        (
            [r["item_id"] for r in retrieved],
            f'retrieved for "{typed_description(wanted.title)}", typed with no category '
            f"({inferred}; searched {searched})",
            {right: "green"},
            {r["item_id"]: f"{r['score']:.2f}" for r in retrieved},
        ),
    ]
    cols = max(len(ids) for ids, *_ in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.7 * cols, 2.1 * len(rows)))
    for r, (ids, _, boxes, scores) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(ids):
                ax.axis("off")
                continue
            item_id = ids[c]
            ax.imshow(load_image(catalog.image_path(item_id), 96))
            label = catalog.items[item_id].title
            label = f"{scores[item_id]} {label}" if item_id in scores else label
            label = textwrap.fill(textwrap.shorten(label, 44, placeholder="…"), 22)
            ax.set_xlabel(label, fontsize=6)
            for spine in ax.spines.values():
                spine.set_edgecolor(boxes.get(item_id, "lightgrey"))
                spine.set_linewidth(3 if item_id in boxes else 1)
    miss = "; red: the model's wrong pick" if pick != right else ""
    fig.suptitle(f"Outfitter demo, a test question (green: the true item{miss})", fontsize=10)
    # fixed margins, row titles above each row (an axes title wider than its axes would make
    # tight_layout shrink the whole grid)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.88, bottom=0.06, wspace=0.25, hspace=0.75)
    for r, (_, title, _, _) in enumerate(rows):
        fig.text(0.02, axes[r][0].get_position().y1 + 0.02, title, fontsize=9)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
