"""Other tools' training configs (axolotl, LLaMA-Factory) turned into sft recipes.

`detect.foreign_tool(data)` says whose config a YAML mapping is, from keys no sft recipe has; the recipe loader
calls `detect.refuse_foreign_config` before its unknown-key check, so `sft train axolotl.yml` says what to do in
one line. `sft migrate FILE -o recipe.yaml` (sft/migrate/convert.py) writes the equivalent recipe from the tables in
sft/migrate/axolotl.py and sft/migrate/llamafactory.py."""
