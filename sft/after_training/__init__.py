"""What comes around a run rather than in it: curating data before (statistics, duplicates, splits), and after
training generating, evaluating, merging adapters and reporting the curves."""
