"""The Amazon co-purchase loader on hand-written McAuley files (JSON, Python literals, gzip)."""

from __future__ import annotations

import gzip
import json

import pytest

from outfitter.data import CATEGORIES, DatasetError
from outfitter.data.amazon import KEYWORDS, load_amazon, read_amazon, semantic_category

ROOT = "Clothing, Shoes & Jewelry"
RECORDS = [
    {
        "asin": "B001",
        "title": "Silk blouse",
        "categories": [[ROOT, "Women", "Clothing", "Tops & Tees"]],
        "related": {
            "bought_together": ["B002"],
            "also_bought": ["B003", "B004", "B999"],
            "also_viewed": ["B005"],
        },
        "imUrl": "http://example.com/B001.jpg",
    },
    {
        "asin": "B002",
        "title": "Wool trousers",
        "categories": [[ROOT, "Women", "Clothing", "Pants"]],
        "related": {"bought_together": ["B001"]},
    },
    {
        "asin": "B003",
        "categories": [[ROOT, "Women", "Shoes", "Ankle Boots"]],
        "related": {"also_bought": []},
    },
    {
        "asin": "B004",
        "title": "Crossbody",
        "description": ["Leather", "strap"],
        "categories": [[ROOT, "Women", "Handbags & Wallets"]],
    },
    {
        "asin": "B005",
        "title": "Another blouse",
        "categories": [[ROOT, "Women", "Clothing", "Blouses"]],
    },
    {"asin": "B006", "title": "Pirate kit", "categories": [[ROOT, "Novelty & More", "Costumes"]]},
    {
        "asin": "B007",
        "title": "Men's dress shirt",
        "categories": [[ROOT, "Men", "Clothing", "Shirts", "Dress Shirts"]],
    },
    {"asin": "B008", "title": "Denim skirt", "categories": [[ROOT, "Women", "Clothing", "Skirts"]]},
    {
        "asin": "B009",
        "title": "Sneakers",
        "categories": [[ROOT, "Women", "Shoes", "Fashion Sneakers"]],
    },
    {
        "asin": "B010",
        "title": "Tote",
        "categories": [[ROOT, "Women", "Handbags & Wallets", "Totes"]],
    },
]


def test_category_keywords():
    assert set(KEYWORDS.values()) == set(CATEGORIES)  # every category is reachable
    assert semantic_category([[ROOT, "Men", "Clothing", "Shirts", "Dress Shirts"]]) == (
        "tops",
        "Dress Shirts",
    )
    assert semantic_category([[ROOT, "Women", "Clothing", "Dresses"]])[0] == "all-body"
    assert (
        semantic_category([[ROOT, "Women", "Accessories", "Sunglasses & Eyewear Accessories"]])[0]
        == "accessories"
    )
    assert semantic_category([[ROOT, "Women", "Jewelry", "Necklaces & Pendants"]])[0] == "jewellery"
    assert semantic_category([[ROOT]]) is None and semantic_category(None) is None


def _check(data):
    items = data.catalog.items
    assert set(items) == {"B001", "B002", "B003", "B004", "B005", "B007", "B008", "B009", "B010"}
    assert data.skipped == {"no fashion category": ["B006"]}
    assert items["B003"].title == "Ankle Boots" and items["B003"].category == "shoes"  # no title
    assert items["B004"].description == "Leather strap"
    positives = {(p.a, p.b): p.weight for p in data.pairs if p.label == 1}
    # B001-B002 bought together and reciprocal; B001-B005 same category, B999 unknown: dropped
    assert positives == {("B001", "B002"): 1.0, ("B001", "B003"): 0.5, ("B001", "B004"): 0.5}
    negatives = [p for p in data.pairs if p.label == 0]
    assert len(negatives) == 3
    for p in negatives:
        assert p.a == "B001" and p.b in ("B008", "B009", "B010")  # the positive's category


def test_json_lines(tmp_path):
    (tmp_path / "meta_Clothing.json").write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    _check(read_amazon(tmp_path))
    catalog, pairs = load_amazon(tmp_path)
    assert catalog.image_path("B001") == tmp_path / "images" / "B001.jpg" and len(pairs) == 6


def test_python_literal_lines_gzip(tmp_path):
    path = tmp_path / "meta_Clothing.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(repr(r) for r in RECORDS))  # the 2014 dump: single-quoted dicts
    _check(read_amazon(path))


def test_malformed_line_and_no_literal_eval_of_code(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(RECORDS[0]) + "\n__import__('os').system('echo pwned')\n")
    with pytest.raises(DatasetError, match=r"meta\.json:2: neither JSON nor a Python literal"):
        read_amazon(tmp_path)


def test_no_metadata_file(tmp_path):
    with pytest.raises(DatasetError, match="found no metadata files"):
        read_amazon(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"related": ["B002"]}, "`related` must be an object"),
        ({"related": {"also_bought": "B002"}}, "`related.also_bought` must be a list of asins"),
        ({"related": {"bought_together": [1, 2]}}, "`related.bought_together` must be a list"),
        ({"asin": 12}, "`asin`"),
        ({"title": {"en": "x"}}, "`title` must be text"),
    ],
)
def test_wrong_field_types_name_file_and_line(tmp_path, change, message):
    records = [RECORDS[1], {**RECORDS[0], **change}]
    (tmp_path / "meta.json").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    with pytest.raises(DatasetError, match=r"meta\.json:2: ") as err:
        read_amazon(tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cut_gzip_and_unhashable_literal(tmp_path):
    blob = gzip.compress("\n".join(json.dumps(r) for r in RECORDS).encode())
    (tmp_path / "meta.json.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match=r"meta\.json\.gz: cannot read .*truncated or corrupt"):
        read_amazon(tmp_path)
    (tmp_path / "meta.json.gz").unlink()
    (tmp_path / "meta.json").write_text("{'asin': 'B1', {'a'}: 1}\n")  # a set as a dict key
    with pytest.raises(DatasetError, match=r"meta\.json:1: neither JSON nor a Python literal"):
        read_amazon(tmp_path)
