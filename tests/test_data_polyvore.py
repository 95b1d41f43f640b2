"""The Polyvore Outfits loader: hand-written files in the published format, the real-quirks
fixture, and the synthetic catalog."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from outfitter.data import CATEGORIES, DatasetError, load_catalog, load_outfit_titles, load_split

META = {
    "11": {
        "url_name": "striped-silk-blouse",
        "description": "A blouse.",
        "catgeories": ["Women's Fashion", "Tops"],
        "title": "Striped silk blouse",
        "related": ["Tops"],
        "category_id": "11",
        "semantic_category": "tops",
    },
    "12": {
        "url_name": "high-waist-denim-jeans",
        "description": "",
        "catgeories": ["Women's Fashion", "Jeans"],
        "title": "",
        "related": [],
        "category_id": "27",
        "semantic_category": "bottoms",
    },
    "13": {
        "url_name": "ankle-boots",
        "title": "Ankle boots",
        "category_id": "41",
        "semantic_category": "shoes",
    },
    "14": {
        "url_name": "black-pumps",
        "title": "Black pumps",
        "category_id": "41",
        "semantic_category": "shoes",
    },
    "15": {
        "url_name": "wool-skirt",
        "title": "Wool skirt",
        "category_id": "27",
        "semantic_category": "bottoms",
    },
}
OUTFITS = {
    "train": [
        {
            "items": [
                {"item_id": "11", "index": 1},
                {"item_id": "12", "index": 3},
                {"item_id": "13", "index": 4},
            ],
            "set_id": "900",
        },
        {"items": [{"item_id": "15", "index": 2}, {"item_id": "11", "index": 1}], "set_id": "901"},
    ],
    "valid": [
        {
            "items": [
                {"item_id": "11", "index": 1},
                {"item_id": "15", "index": 2},
                {"item_id": "14", "index": 5},
            ],
            "set_id": "800",
        },
        {"items": [{"item_id": "12", "index": 1}, {"item_id": "13", "index": 2}], "set_id": "801"},
    ],
    "test": [
        {
            "items": [
                {"item_id": "11", "index": 1},
                {"item_id": "12", "index": 2},
                {"item_id": "13", "index": 3},
            ],
            "set_id": "700",
        },
        {"items": [{"item_id": "15", "index": 1}, {"item_id": "14", "index": 2}], "set_id": "701"},
    ],
}
FITB_VALID = [
    {
        "question": ["800_1", "800_2"],
        "answers": ["801_2", "800_5", "801_1", "801_2"],
        "blank_position": 5,
    }
]


def write_mini(root: Path) -> Path:
    """A tiny dataset written byte for byte in the published layout."""
    (root / "images").mkdir(parents=True)
    (root / "polyvore_item_metadata.json").write_text(json.dumps(META))
    (root / "polyvore_outfit_titles.json").write_text(
        json.dumps({"900": {"url_name": "fall-look", "title": ""}})
    )
    (root / "categories.csv").write_text("11,Tops,tops\n27,Jeans,bottoms\n41,Boots,shoes\n")
    for item_id in META:
        (root / "images" / f"{item_id}.jpg").write_bytes(b"")
    for version in ("nondisjoint", "disjoint"):
        folder = root / version
        folder.mkdir()
        for split, outfits in OUTFITS.items():
            (folder / f"{split}.json").write_text(json.dumps(outfits))
        (folder / "compatibility_valid.txt").write_text(
            "1 800_1 800_2 800_5\n0 800_1 801_1 801_2\n\n"
        )
        (folder / "fill_in_blank_valid.json").write_text(json.dumps(FITB_VALID))
    return root


def test_handwritten_catalog(tmp_path):
    catalog = load_catalog(write_mini(tmp_path))
    assert catalog.item_ids == ["11", "12", "13", "14", "15"]
    blouse, jeans = catalog.items["11"], catalog.items["12"]
    assert (blouse.title, blouse.category, blouse.fine_category) == (
        "Striped silk blouse",
        "tops",
        "Tops",
    )
    assert jeans.title == "high waist denim jeans"  # empty title -> readable url_name
    assert jeans.fine_category == "Jeans" and jeans.category_index == CATEGORIES.index("bottoms")
    assert catalog.items["13"].description == ""  # missing keys are tolerated
    assert catalog.image_path("11") == tmp_path / "images" / "11.jpg"
    assert load_outfit_titles(tmp_path) == {"900": "fall look"}


def test_handwritten_split_resolves_references(tmp_path):
    root = write_mini(tmp_path)
    catalog = load_catalog(root)
    valid = load_split(root, "nondisjoint", "valid", catalog)
    assert [o.set_id for o in valid.outfits] == ["800", "801"]
    assert valid.outfits[0].item_ids == ("11", "15", "14") and valid.outfits[0].indices == (1, 2, 5)
    assert [q.label for q in valid.compatibility] == [1, 0]
    assert valid.compatibility[1].item_ids == ("11", "12", "13")  # negative mixing two outfits
    (q,) = valid.fitb
    assert q.question == ("11", "15") and q.correct == 1 and q.answers[q.correct] == "14"
    assert q.blank_position == 5
    train = load_split(root, "nondisjoint", "train", catalog)
    assert train.outfits[1].item_ids == ("11", "15")  # sorted by index
    assert train.compatibility == [] and train.fitb == []  # no task files: empty lists


def test_fixture_quirks(polyvore_mini):
    catalog = load_catalog(polyvore_mini)
    raw = json.loads((polyvore_mini / "polyvore_item_metadata.json").read_text())
    empty = [i for i, e in raw.items() if not e["title"]]
    assert empty, "the fixture has empty titles"
    for item_id in empty:
        title = catalog.items[item_id].title
        assert title and "-" not in title and title == raw[item_id]["url_name"].replace("-", " ")
    test = load_split(polyvore_mini, "nondisjoint", "test", catalog)
    assert any(o.indices != tuple(range(1, len(o.indices) + 1)) for o in test.outfits)  # gaps
    assert {q.label for q in test.compatibility} == {0, 1}
    assert len({q.correct for q in test.fitb}) > 1  # the right answer is not always first
    for q in test.fitb:
        outfit = next(o for o in test.outfits if q.question[0] in o.item_ids)
        assert q.answers[q.correct] in outfit.item_ids
    disjoint_train = load_split(polyvore_mini, "disjoint", "train", catalog)
    assert disjoint_train.outfits and not disjoint_train.compatibility and not disjoint_train.fitb


def test_truncated_json_names_file_and_line(tmp_path):
    root = write_mini(tmp_path)
    path = root / "nondisjoint" / "valid.json"
    path.write_text(json.dumps(OUTFITS["valid"], indent=1)[:-40])
    with pytest.raises(DatasetError, match=r"valid\.json:\d+:\d+: invalid JSON"):
        load_split(root, "nondisjoint", "valid")


def test_unknown_reference_names_line(tmp_path):
    root = write_mini(tmp_path)
    (root / "nondisjoint" / "compatibility_valid.txt").write_text("1 800_1 800_2\n1 800_1 800_9\n")
    with pytest.raises(DatasetError, match=r"compatibility_valid\.txt:2: 800_9"):
        load_split(root, "nondisjoint", "valid")


def test_unknown_item_with_catalog(tmp_path):
    root = write_mini(tmp_path)
    catalog = load_catalog(root)
    del catalog.items["14"]
    with pytest.raises(DatasetError, match="not in polyvore_item_metadata.json"):
        load_split(root, "nondisjoint", "valid", catalog)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="version"):
        load_split(tmp_path, "both", "train")
    with pytest.raises(DatasetError, match="file not found"):
        load_catalog(tmp_path)


def test_synthetic_catalog_loads(synth_dir):
    catalog = load_catalog(synth_dir)
    assert len(catalog.items) > 600
    assert {i.category for i in catalog.items.values()} == set(CATEGORIES)
    for version in ("nondisjoint", "disjoint"):
        for split in ("train", "valid", "test"):
            s = load_split(synth_dir, version, split, catalog)
            assert s.outfits
            assert all(3 <= len(o.item_ids) <= 8 for o in s.outfits)
            if split != "train" or version == "nondisjoint":
                assert len(s.compatibility) == 2 * len(s.outfits)
                assert len(s.fitb) == len(s.outfits)
                assert all(len(q.answers) == 4 for q in s.fitb)
            else:
                assert not s.compatibility and not s.fitb
