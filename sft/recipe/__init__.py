"""What the user asked for: a recipe read (reading, command_line, load), checked (coercion, checks), changed in one
place (finalize) and written back as the reproducible resolved recipe (resolved). Import from the submodules."""
