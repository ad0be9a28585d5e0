"""Small synthetic MovieLens-format data for fast tests (the real data is never committed).

The generator plants structure a recommender can find: every user likes the movies of
"their" genre (by gender and age), popular movies are rated more often, and two movies are
"twins" (same title and year, different ids) as in ml-100k. Files are written in either the
GroupLens layout or the registry-package (recbole) layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.recommender.data import GENRES
from app.recommender.segments import OCCUPATIONS

N_USERS = 120
N_MOVIES = 60
TWIN_IDS = (59, 60)  # same title and year: the catalogue merges them into movie 59


def make_tables(seed: int = 7, n_users: int = N_USERS, n_movies: int = N_MOVIES) -> dict[str, list[tuple]]:
    rng = np.random.default_rng(seed)
    users = []
    for user_id in range(1, n_users + 1):
        gender = "F" if user_id % 2 else "M"
        age = int(rng.integers(15, 70))
        occupation = OCCUPATIONS[int(rng.integers(0, 6))]
        users.append((user_id, age, gender, occupation, f"{10000 + user_id}"))
    movies = []
    for movie_id in range(1, n_movies + 1):
        # two genre "tastes": odd movies Romance (liked by F), even movies Action (liked by M)
        genre = "Romance" if movie_id % 2 else "Action"
        year = 1980 + movie_id % 20
        title = f"Movie {movie_id}"
        if movie_id in TWIN_IDS:
            title, year, genre = "Twin Movie", 1995, "Comedy"
        movies.append((movie_id, title, year, genre))
    popularity = 1.0 / np.arange(1, n_movies + 1) ** 0.6
    ratings = []
    timestamp = 880_000_000
    for user_id, age, gender, _occ, _zip in users:
        n = int(rng.integers(12, 30))
        seen = rng.choice(n_movies, size=n, replace=False, p=popularity / popularity.sum()) + 1
        for movie_id in seen:
            likes = (movie_id % 2 == 1) == (gender == "F")
            young_bonus = 1 if age < 30 and movie_id <= 10 else 0
            base = 4 if likes else 2
            rating = int(np.clip(base + young_bonus + rng.integers(-1, 2), 1, 5))
            timestamp += int(rng.integers(1, 5000))
            ratings.append((user_id, int(movie_id), rating, timestamp))
    return {"users": users, "movies": movies, "ratings": ratings}


def write_grouplens(directory: Path, seed: int = 7) -> Path:
    tables = make_tables(seed)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "u.data").write_text("".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in tables["ratings"]))
    (directory / "u.user").write_text("".join(f"{u}|{a}|{g}|{o}|{z}\n" for u, a, g, o, z in tables["users"]))
    lines = []
    for movie_id, title, year, genre in tables["movies"]:
        flags = "|".join("1" if g == genre else "0" for g in GENRES)
        lines.append(
            f"{movie_id}|{title} ({year})|01-Jan-{year}||http://example.invalid/{movie_id}|{flags}\n"
        )
    (directory / "u.item").write_text("".join(lines), encoding="latin-1")
    return directory


def write_recbole(directory: Path, seed: int = 7) -> Path:
    tables = make_tables(seed)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in tables["ratings"])
    )
    (directory / "ml-100k.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        + "".join(f"{u}\t{a}\t{g}\t{o}\t{z}\n" for u, a, g, o, z in tables["users"])
    )
    (directory / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        + "".join(f"{m}\t{title}\t{year}\t{genre}\n" for m, title, year, genre in tables["movies"])
    )
    return directory


PARTIAL = {  # layout: its writer, its item file (made absent), its label, the names found and missing
    "grouplens": (write_grouplens, "u.item", "GroupLens", "u.data, u.user", "u.item"),
    "recbole": (
        write_recbole,
        "ml-100k.item",
        "registry-package",
        "ml-100k.inter, ml-100k.user",
        "ml-100k.item",
    ),
}


def spoil_a_rating(directory: Path) -> str:
    """Add a rating outside 0.5..5 to the GroupLens ``u.data`` in ``directory``; how the refusal
    of that file begins."""
    with (directory / "u.data").open("a") as ratings:
        ratings.write("1\t1\t9\t881250949\n")
    return "u.data: rating must be 0.5..5.0"


def partial_data_root(root: Path, layout: str, how: str) -> str:
    """A data root holding two of ``layout``'s three files (the third ``how``: missing, or misnamed
    with an ``s``) beside a complete ml-100k cache; how the one-line refusal it must get begins."""
    write, item, label, found, missing = PARTIAL[layout]
    write_recbole(root / "ml-100k")  # the public data set, which was used instead, silently
    write(root)
    if how == "missing":
        (root / item).unlink()
    else:
        (root / item).rename(root / f"{item}s")
    return f"{root} holds part of the {label} files: found {found}; missing {missing}"
