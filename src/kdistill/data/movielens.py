"""MovieLens-100K: 100,000 ratings (1–5 stars) of 1,682 movies by 943 users, read from the
``recbole==1.2.1`` wheel's example data (``recbole/dataset_example/ml-100k/ml-100k.inter``).

F. Maxwell Harper and Joseph A. Konstan, "The MovieLens Datasets: History and Context", ACM TiiS
5(4), 2015. The GroupLens licence forbids redistribution: the file is read where pip put it and
never copied into a repository or a run directory.

Evaluation protocol (He et al., "Neural Collaborative Filtering", WWW 2017): leave-one-out by
time. Each user's interactions are sorted by timestamp (ties by item id); the last is the test
interaction, the one before it the validation interaction, the rest are for training. Each
held-out interaction is ranked against 99 items the user never rated, sampled without
replacement with a fixed seed; HR@10 and NDCG@10 are computed on that list of 100, RMSE on the
held-out ratings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from kdistill.data.base import DataSplits, SharedEpoch
from kdistill.data.images import _package_dir
from kdistill.errors import DataError

INSTALL_HINT = "install it with: pip install --no-deps recbole==1.2.1"
EVAL_NEGATIVES = 99


def read_interactions(file: Path) -> np.ndarray:
    """(N, 4) float64 rows of user token, item token, rating, timestamp from a RecBole
    ``.inter`` file (tab-separated, header ``user_id:token item_id:token rating:float
    timestamp:float``)."""
    try:
        with open(file) as f:
            header = f.readline().rstrip("\n").split("\t")
            names = [column.split(":")[0] for column in header]
            missing = {"user_id", "item_id", "rating", "timestamp"} - set(names)
            if missing:
                raise DataError(f"{file}: the header lacks {sorted(missing)} (found {names})")
            table = np.loadtxt(f, delimiter="\t", dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as error:
        raise DataError(f"{file}: not a readable RecBole .inter file ({error})") from None
    return table[:, [names.index(c) for c in ("user_id", "item_id", "rating", "timestamp")]]


class TrainInteractions(Dataset):
    """Training interactions, each with ``negatives`` items the user never rated.

    A sample is ``{"input": {"user": (), "items": (1 + negatives,)}, "target": (1 + negatives,),
    "index"}``: the rated item first with its rating as target, then the sampled items with
    target 0 ("not interacted"). Negatives are redrawn every epoch from a generator seeded by
    (seed, epoch), so runs are reproducible and the scratch and the distilled student see the
    same ones.
    """

    def __init__(
        self, users, items, ratings, rated: np.ndarray, num_items: int, negatives: int, seed: int
    ):
        self.users = torch.as_tensor(users, dtype=torch.long)
        self.items = torch.as_tensor(items, dtype=torch.long)
        self.ratings = torch.as_tensor(ratings, dtype=torch.float32)
        self.rated = rated  # sorted keys user * num_items + item of every rating, all splits
        self.num_items = num_items
        self.negatives = negatives
        self.seed = seed
        self._epoch = SharedEpoch()  # read by persistent loader workers too
        self._drawn: tuple[int, torch.Tensor] | None = None

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)

    @property
    def sampled(self) -> torch.Tensor:
        """This epoch's negatives, (samples, negatives), drawn where they are first read."""
        epoch = self._epoch.get()
        if self._drawn is None or self._drawn[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._drawn = (
                epoch,
                torch.from_numpy(
                    sample_unrated(
                        self.users.numpy(), self.rated, self.num_items, self.negatives, rng
                    )
                ),
            )
        return self._drawn[1]

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, i: int) -> dict:
        items = torch.cat([self.items[i : i + 1], self.sampled[i]])
        target = torch.zeros(len(items))
        target[0] = self.ratings[i]
        return {
            "input": {"user": self.users[i], "items": items},
            "target": target,
            "index": torch.tensor(i),
        }


class HeldOut(Dataset):
    """One held-out interaction per user, ranked against fixed unrated items (item 0 is the
    held-out one; target: its rating, then zeros)."""

    def __init__(self, users, items, ratings, negatives: np.ndarray):
        self.users = torch.as_tensor(users, dtype=torch.long)
        self.candidates = torch.cat(
            [torch.as_tensor(items, dtype=torch.long)[:, None], torch.from_numpy(negatives)], dim=1
        )
        self.targets = torch.zeros(self.candidates.shape, dtype=torch.float32)
        self.targets[:, 0] = torch.as_tensor(ratings, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, i: int) -> dict:
        return {
            "input": {"user": self.users[i], "items": self.candidates[i]},
            "target": self.targets[i],
            "index": torch.tensor(i),
        }


def sample_unrated(
    users: np.ndarray, rated: np.ndarray, num_items: int, count: int, rng: np.random.Generator
) -> np.ndarray:
    """(len(users), count) items each user has not rated, drawn uniformly, vectorised.

    Draws with replacement across rows, redrawing only the collisions with rated items (and,
    within a row, duplicates) until none remain; ``rated`` holds sorted keys user·I + item.
    """
    out = rng.integers(0, num_items, size=(len(users), count))
    for _ in range(1000):
        keys = users[:, None] * num_items + out
        bad = np.isin(keys, rated)
        sorted_rows = np.sort(out, axis=1)
        dup_rows = (
            np.flatnonzero((sorted_rows[:, 1:] == sorted_rows[:, :-1]).any(axis=1))
            if count > 1
            else []
        )
        for row in dup_rows:  # rare: mark the second occurrence of each repeated item
            _, first = np.unique(out[row], return_index=True)
            repeat = np.ones(count, dtype=bool)
            repeat[first] = False
            bad[row] |= repeat
        if not bad.any():
            return out
        out[bad] = rng.integers(0, num_items, size=int(bad.sum()))
    raise DataError("cannot sample unrated items: some user has rated almost every item")


def load_movielens(
    *,
    path: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    subset: int | None = None,
    negatives: int = 4,
) -> DataSplits:
    """MovieLens-100K ratings (from the recbole wheel), leave-one-out by time, 99 sampled negatives.

    Samples are a user and a list of candidate items; models score each candidate twice, as a
    predicted rating and as a preference logit (``task: rating``). Training lists hold one rated
    item and ``negatives`` unrated ones (redrawn each epoch); validation and test lists hold the
    user's second-to-last and last interaction and 99 unrated items fixed by ``seed``.
    ``val_fraction`` / ``test_fraction`` are unused (one interaction per user each). ``subset``
    keeps that many users, drawn with ``seed``. ``path``: a RecBole ``.inter`` file.
    """
    if path is None:
        file = (
            _package_dir("recbole", INSTALL_HINT) / "dataset_example" / "ml-100k" / "ml-100k.inter"
        )
    else:
        file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: MovieLens-100K file not found; {INSTALL_HINT}")
    table = read_interactions(file)
    rng = np.random.default_rng(seed)
    if subset is not None:
        users = np.unique(table[:, 0])
        if subset < len(users):
            keep = rng.choice(users, size=subset, replace=False)
            table = table[np.isin(table[:, 0], keep)]
    user_tokens, users = np.unique(table[:, 0], return_inverse=True)
    item_tokens, items = np.unique(table[:, 1], return_inverse=True)
    ratings, times = table[:, 2], table[:, 3]
    num_users, num_items = len(user_tokens), len(item_tokens)

    # Leave-one-out by time: sort by user, then timestamp, then item (a deterministic tie-break).
    order = np.lexsort((items, times, users))
    users, items, ratings = users[order], items[order], ratings[order]
    counts = np.bincount(users, minlength=num_users)
    last = np.cumsum(counts) - 1
    held = counts >= 3  # users with fewer interactions keep them all for training
    test_rows, val_rows = last[held], last[held] - 1
    train_mask = np.ones(len(users), dtype=bool)
    train_mask[test_rows] = False
    train_mask[val_rows] = False

    rated = np.unique(users * num_items + items)
    val_neg = sample_unrated(users[val_rows], rated, num_items, EVAL_NEGATIVES, rng)
    test_neg = sample_unrated(users[test_rows], rated, num_items, EVAL_NEGATIVES, rng)
    train = TrainInteractions(
        users[train_mask], items[train_mask], ratings[train_mask], rated, num_items, negatives, seed
    )
    return DataSplits(
        train=train,
        val=HeldOut(users[val_rows], items[val_rows], ratings[val_rows], val_neg),
        test=HeldOut(users[test_rows], items[test_rows], ratings[test_rows], test_neg),
        num_classes=2,
        input_shape=(num_users, num_items),
        class_names=["rating", "preference"],
        task="rating",
        identity={
            "dataset": "movielens-100k",
            "file": file.name,
            "subset": subset,
            "users": num_users,
            "items": num_items,
            "ratings": len(users),
            "split": {
                "by": "leave-one-out by timestamp",
                "eval_negatives": EVAL_NEGATIVES,
                "seed": seed,
                "train_negatives": negatives,
            },
            "sizes": {
                "train": int(train_mask.sum()),
                "val": int(held.sum()),
                "test": int(held.sum()),
            },
        },
    )
