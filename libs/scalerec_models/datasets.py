"""Public dataset files -> :class:`~scalerec_models.data.Interactions` (numpy only).

One loader per file format, registered in :data:`LOADERS`; ``scalerec
eval-dataset`` and the tests go through :func:`load_dataset`.  Every loader
returns the same columns (user, item, timestamp in seconds, optional rating)
plus content features by item id when the dataset ships a movie file, so the
protocol and the models never see which format the events came from.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scalerec_features import context_features, item_feature_vector

from scalerec_models.data import Interactions


@dataclass
class Dataset:
    name: str
    interactions: Interactions
    item_features: dict[str, list[int]]  # content features by item id (empty when the dataset has none)


@dataclass
class _Rows:
    """What a loader reads: parallel columns and content features by item id."""

    users: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    ts_s: list[int] = field(default_factory=list)
    ratings: list[float | None] = field(default_factory=list)
    features: dict[str, list[int]] = field(default_factory=dict)

    def add(self, user: str, item: str, ts_s: int, rating: float | None) -> None:
        self.users.append(user)
        self.items.append(item)
        self.ts_s.append(ts_s)
        self.ratings.append(rating)

    def interactions(self) -> Interactions:
        ts_ms = np.asarray(self.ts_s, dtype=np.int64) * 1000
        ctx = np.array([context_features(int(t)) for t in ts_ms], dtype=np.int64).reshape(len(self.users), 4)
        return Interactions(
            user_id=np.asarray(self.users, dtype=object),
            item_id=np.asarray(self.items, dtype=object),
            ts_ms=ts_ms,
            type=np.asarray(["click" if r is None else "rating" for r in self.ratings], dtype=object),
            value=np.asarray([np.nan if r is None else r for r in self.ratings], dtype=np.float32),
            context=ctx,
        )


def _movie_features(title: str, genres: Sequence[str]) -> list[int]:
    # Genres go first so they survive the TEXT_TOKENS cut; the genre set is the category.
    return item_feature_vector("|".join(genres) or None, None, title=" ".join(genres), text=title)


def _resolve(path: Path, name: str) -> Path:
    if path.is_dir():
        p = path / name
        if not p.exists():
            raise FileNotFoundError(f"{p} not found (expected the {name} file of the dataset in {path})")
        return p
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    return path


def load_movielens_100k(path: Path) -> tuple[Path, _Rows]:
    """``u.data`` (user<TAB>item<TAB>rating<TAB>ts); titles and genre flags from ``u.item``/``u.genre``."""
    f = _resolve(path, "u.data")
    rows = _Rows()
    for line in f.read_text(encoding="latin-1").splitlines():
        if line.strip():
            u, i, r, t = line.split("\t")[:4]
            rows.add(u, i, int(t), float(r))
    genre_names = []
    if (f.parent / "u.genre").exists():
        genre_names = [ln.split("|")[0] for ln in (f.parent / "u.genre").read_text("latin-1").splitlines() if ln]
    if (f.parent / "u.item").exists():
        for line in (f.parent / "u.item").read_text(encoding="latin-1").splitlines():
            parts = line.split("|")
            if len(parts) < 5:
                continue
            genres = [genre_names[k] if k < len(genre_names) else f"g{k}" for k, v in enumerate(parts[5:]) if v == "1"]
            rows.features[parts[0]] = _movie_features(parts[1], genres)
    return f, rows


def load_movielens_1m(path: Path) -> tuple[Path, _Rows]:
    """``ratings.dat`` (user::item::rating::ts); titles and genres from ``movies.dat``."""
    f = _resolve(path, "ratings.dat")
    rows = _Rows()
    for line in f.read_text(encoding="latin-1").splitlines():
        if line.strip():
            u, i, r, t = line.split("::")[:4]
            rows.add(u, i, int(t), float(r))
    if (f.parent / "movies.dat").exists():
        for line in (f.parent / "movies.dat").read_text(encoding="latin-1").splitlines():
            parts = line.split("::")
            if len(parts) == 3:
                rows.features[parts[0]] = _movie_features(parts[1], parts[2].split("|"))
    return f, rows


def load_movielens_csv(path: Path) -> tuple[Path, _Rows]:
    """``ratings.csv`` (userId,movieId,rating,timestamp) and ``movies.csv`` (the ml-latest files)."""
    f = _resolve(path, "ratings.csv")
    rows = _Rows()
    with f.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            rows.add(row["userId"], row["movieId"], int(row["timestamp"]), float(row["rating"]))
    movies = f.parent / "movies.csv"
    if movies.exists():
        with movies.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                genres = [g for g in row["genres"].split("|") if g and g != "(no genres listed)"]
                rows.features[row["movieId"]] = _movie_features(row["title"], genres)
    return f, rows


def load_interactions_csv(path: Path) -> tuple[Path, _Rows]:
    """Any CSV with a header naming user, item, timestamp (seconds or ms) and optionally rating."""
    f = _resolve(path, "interactions.csv")
    rows = _Rows()
    with f.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = {c.lower().strip(): c for c in reader.fieldnames or []}
        missing = [c for c in ("user", "item", "timestamp") if c not in cols]
        if missing:
            raise ValueError(f"{f}: header needs user,item,timestamp[,rating]; missing {', '.join(missing)}")
        for n, row in enumerate(reader, start=2):
            try:
                stamp = int(float(row[cols["timestamp"]]))
                rating = row.get(cols["rating"]) if "rating" in cols else None
                rows.add(
                    row[cols["user"]],
                    row[cols["item"]],
                    stamp // 1000 if stamp > 10**11 else stamp,
                    float(rating) if rating not in (None, "") else None,
                )
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{f}:{n}: cannot parse row {row}: {exc}") from exc
    return f, rows


LOADERS: dict[str, Callable[[Path], tuple[Path, _Rows]]] = {
    "movielens-100k": load_movielens_100k,
    "movielens-1m": load_movielens_1m,
    "movielens-csv": load_movielens_csv,
    "csv": load_interactions_csv,
}
FORMATS = tuple(LOADERS)


def load_dataset(path: str | Path, fmt: str) -> Dataset:
    """Load a dataset; ``path`` is the dataset folder or its ratings file.

    Formats: ``movielens-100k`` (u.data: user<TAB>item<TAB>rating<TAB>ts, u.item for titles/genres),
    ``movielens-1m`` (ratings.dat: user::item::rating::ts, movies.dat), ``movielens-csv``
    (ratings.csv with header userId,movieId,rating,timestamp, movies.csv), ``csv``
    (header with user,item,timestamp[,rating]; timestamps in seconds or milliseconds).
    Content files are read when present next to the ratings; they are optional.
    """
    if fmt not in LOADERS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    path = Path(path)
    f, rows = LOADERS[fmt](path)
    if not rows.users:
        raise ValueError(f"{path}: no interactions found for format {fmt}")
    return Dataset(
        name=f"{fmt}:{f.parent.name if f.parent.name else f.name}",
        interactions=rows.interactions(),
        item_features=rows.features,
    )
