"""Plots logged with each training run: training curves, ROC curve, FITB examples grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: list[dict], out: Path) -> Path:
    """Train loss and validation metrics per epoch."""
    plt = _plt()
    epochs = [h.get("epoch") for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    for key in (
        "train_loss",
        "train_compatibility_loss",
        "train_retrieval_loss",
        "train_triplet_loss",
    ):
        if any(key in h for h in history):
            left.plot(
                epochs, [h.get(key) for h in history], marker="o", label=key.removeprefix("train_")
            )
    left.set(xlabel="epoch", ylabel="loss", title="training loss")
    left.legend(fontsize=7)
    for key in (
        "valid_compatibility_auc",
        "valid_fitb_accuracy",
        "valid_fitb_accuracy_compat",
        "valid_recall_at_10",
    ):
        if any(key in h for h in history):
            right.plot(
                epochs, [h.get(key) for h in history], marker="o", label=key.removeprefix("valid_")
            )
    right.set(xlabel="epoch", ylim=(0, 1), title="validation")
    right.legend(fontsize=7)
    path = out / "training_curves.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def roc_curve_plot(labels, scores, out: Path) -> Path:
    """ROC curve of compatibility scores on the validation questions."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, label=f"AUC = {roc_auc_score(labels, scores):.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(
        xlabel="false positive rate", ylabel="true positive rate", title="compatibility ROC (valid)"
    )
    ax.legend(loc="lower right")
    path = out / "roc_valid.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def fitb_grid(catalog, questions, scores, out: Path, n: int = 6) -> Path:
    """Thumbnails of FITB questions: the outfit, then the answers; chosen answer boxed
    (green when right, red when wrong)."""
    from outfitter.data.images import load_image

    plt = _plt()
    questions = questions[:n]
    cols = max(len(q.question) + len(q.answers) + 1 for q in questions)
    fig, axes = plt.subplots(len(questions), cols, figsize=(cols * 1.1, len(questions) * 1.2))
    axes = np.atleast_2d(axes)
    for r, (q, s) in enumerate(zip(questions, scores, strict=False)):
        chosen = int(np.argmax(s))
        cells = (
            [(i, None) for i in q.question]
            + [(None, None)]
            + [
                (a, "green" if k == q.correct == chosen else "red" if k == chosen else None)
                for k, a in enumerate(q.answers)
            ]
        )
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c >= len(cells) or cells[c][0] is None:
                if c < len(cells):
                    ax.text(0.5, 0.5, "?", ha="center", va="center", fontsize=16)
                continue
            item_id, colour = cells[c]
            try:
                ax.imshow(load_image(catalog.image_path(item_id), 64))
            except Exception:  # a missing thumbnail must not lose the run's other plots
                ax.text(0.5, 0.5, item_id[:8], ha="center", fontsize=6)
            if colour:
                ax.axis("on")
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(3)
    fig.suptitle("FITB (valid): outfit | ? | answers (box = model's choice)", fontsize=9)
    path = out / "fitb_examples.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def training_plots(history, opened, version: str, out: Path) -> list[Path]:
    """All plots of a finished run (curves, ROC, FITB grid) into `out`.

    Args:
        opened: the run's best checkpoint, opened on its catalog (`platform.vectors`); its
            catalog vectors are the ones the final evaluation read.
    """
    import torch

    from outfitter.data import load_split
    from outfitter.model.evaluate import outfit_logits

    out.mkdir(parents=True, exist_ok=True)
    paths = [training_curves(history, out)] if history else []
    model, catalog = opened.model, opened.catalog
    split = load_split(opened.data_dir, version, "valid", catalog, opened.data_format)
    row = {item_id: r for r, item_id in enumerate(catalog.item_ids)}
    with torch.no_grad():
        vecs = opened.item_vectors_tensor()  # (M, D)
        if split.compatibility:
            outfits = [[row[i] for i in q.item_ids] for q in split.compatibility]
            scores = outfit_logits(model, vecs, outfits, batch_size=256).tolist()
            labels = [q.label for q in split.compatibility]
            if len(set(labels)) == 2:
                paths.append(roc_curve_plot(labels, scores, out))
        if split.fitb:
            chosen = split.fitb[:6]
            scores = [
                outfit_logits(
                    model,
                    vecs,
                    [[row[i] for i in q.question] + [row[a]] for a in q.answers],
                    batch_size=len(q.answers),
                ).tolist()
                for q in chosen
            ]
            paths.append(fitb_grid(catalog, chosen, scores, out))
    return paths
