"""The recipe's mixture: its sources from dataset_name, `datasets:` (TRL) or `dataset_mixture`
(alignment-handbook), each checked, with the eval split size and seed."""

import dataclasses

from sft.data.formats import FORMATS
from sft.data.sources import Source
from sft.errors import UserError

HANDBOOK_KEYS = ("datasets", "test_split_size", "seed")
HANDBOOK_ENTRY_KEYS = ("id", "config", "split", "columns", "weight", "format", "column_mapping", "data_files",
                       "data_dir")



def _closest(key: str, candidates) -> str:
    from sft.recipe.coercion import closest

    return closest(key, candidates, otherwise=f" (valid keys: {', '.join(candidates)})")


def check_source_values(source: Source, where: str) -> Source:
    """Per-source values checked; `where` prefixes each key in messages ("r.yaml: datasets[0]." or "r.yaml: ")."""
    if source.format is not None and source.format not in FORMATS:
        raise UserError(f"{where}format: must be one of {', '.join(FORMATS)}; got {source.format!r}")
    if source.column_mapping is not None and not (
            isinstance(source.column_mapping, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in source.column_mapping.items())):
        raise UserError(f"{where}column_mapping: must map source column names to format column names, e.g. "
                        "{question: prompt, answer: completion}")
    if source.columns is not None and not (isinstance(source.columns, list)
                                           and all(isinstance(c, str) for c in source.columns)):
        raise UserError(f"{where}columns: must be a list of column names")
    for key in ("weight", "fraction"):
        value = getattr(source, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise UserError(f"{where}{key}: must be a positive number; got {value!r}")
    if source.weight is not None and source.weight > 1:
        raise UserError(f"{where}weight: is the share of this dataset kept, at most 1; got {source.weight}")
    return source


def recipe_sources(recipe) -> tuple[list[Source], float | None, int, list[str]]:
    """(sources, test_split_size, seed, notes) from dataset_name, `datasets:` (TRL) or `dataset_mixture`
    (alignment-handbook)."""
    from sft.recipe.coercion import resolve_path

    notes = []
    handbook, trl_entries = recipe.sft.dataset_mixture, list(recipe.mixture.datasets or [])
    test_size, seed = recipe.mixture.test_split_size, recipe.training.seed
    if handbook and trl_entries:
        raise UserError(f"{recipe.source}: both 'datasets' (TRL) and 'dataset_mixture' (alignment-handbook) are set; "
                        "keep one")
    sources = []
    if handbook:
        if not isinstance(handbook, dict):
            raise UserError(f"{recipe.source}: dataset_mixture must be a mapping with datasets, test_split_size, seed")
        for key in handbook:
            if key not in HANDBOOK_KEYS:
                raise UserError(f"{recipe.source}: dataset_mixture: unknown key '{key}'{_closest(key, HANDBOOK_KEYS)}")
        entries = handbook.get("datasets")
        if not isinstance(entries, list) or not entries:
            raise UserError(f"{recipe.source}: dataset_mixture.datasets must be a non-empty list of {{id, config, "
                            "split, columns, weight}}")
        for number, entry in enumerate(entries):
            where = f"{recipe.source}: dataset_mixture.datasets[{number}]: "
            if not isinstance(entry, dict) or not entry.get("id"):
                raise UserError(f"{where}each entry needs an 'id' (a data file, folder, glob or Hub dataset)")
            for key in entry:
                if key not in HANDBOOK_ENTRY_KEYS:
                    raise UserError(f"{where}unknown key '{key}'{_closest(key, HANDBOOK_ENTRY_KEYS)}")
            sources.append(check_source_values(Source(
                label=f"dataset_mixture.datasets[{number}] ({entry['id']})", path=entry["id"],
                name=entry.get("config"), split=entry.get("split") or "train", data_files=entry.get("data_files"),
                data_dir=entry.get("data_dir"), columns=entry.get("columns"), weight=entry.get("weight"),
                format=entry.get("format"), column_mapping=entry.get("column_mapping")), where))
        if handbook.get("test_split_size") is not None:
            test_size = handbook["test_split_size"]
        if handbook.get("seed") is not None:
            seed = handbook["seed"]
    elif trl_entries:
        for number, entry in enumerate(trl_entries):
            values = dataclasses.asdict(entry) if dataclasses.is_dataclass(entry) else dict(entry)
            sources.append(check_source_values(Source(
                label=f"datasets[{number}] ({values['path']})", path=values["path"], name=values.get("name"),
                split=values.get("split") or "train", data_files=values.get("data_files"),
                data_dir=values.get("data_dir"), columns=values.get("columns"), fraction=values.get("fraction"),
                format=values.get("format"), column_mapping=values.get("column_mapping")),
                f"{recipe.source}: datasets[{number}]."))
        fractions = [s.fraction for s in sources]
        if any(f is not None for f in fractions) and any(f is None for f in fractions):
            raise UserError(f"{recipe.source}: datasets: set 'fraction' for every dataset of the mixture or for none")
    elif recipe.script.dataset_name:
        sources.append(check_source_values(Source(
            label=recipe.script.dataset_name, path=recipe.script.dataset_name, name=recipe.script.dataset_config,
            split=recipe.script.dataset_train_split, column_mapping=recipe.sft.column_mapping), f"{recipe.source}: "))
    else:
        raise UserError(f"{recipe.source}: missing key 'dataset_name' (a data file, folder, glob or Hub dataset), or "
                        "a mixture under 'datasets' or 'dataset_mixture'")
    if (handbook or trl_entries) and recipe.script.dataset_name:
        notes.append(f"dataset_name {recipe.script.dataset_name} is ignored: the mixture lists the data")
    for source in sources:
        source.path = resolve_path(source.path, recipe.base_dir)
        if isinstance(source.data_files, str):
            source.data_files = resolve_path(source.data_files, recipe.base_dir)
        elif isinstance(source.data_files, list):
            source.data_files = [resolve_path(f, recipe.base_dir) for f in source.data_files]
    return sources, test_size, seed, notes

