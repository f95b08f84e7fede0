"""The `sft` command. Each subcommand lives in its own module in `sft/commands/` and is imported only when
used, so `sft --help` never imports torch."""

import importlib
import pkgutil
import sys

import click

import sft.commands
from sft.errors import exit_on_user_error, take_debug_flag
from sft.console import quiet_library_noise


class CommandsFromModules(click.Group):
    """Subcommand `foo-bar` is the `command` object of module `sft.commands.foo_bar`."""

    def list_commands(self, ctx):
        return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(sft.commands.__path__))

    def get_command(self, ctx, name):
        if name not in self.list_commands(ctx):
            return None
        return importlib.import_module(f"sft.commands.{name.replace('-', '_')}").command


@click.group(cls=CommandsFromModules, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sft")
def cli():
    """Fine-tune an LLM from one recipe file. Add --debug to any command for a full traceback on errors."""


def main(argv=None):
    quiet_library_noise()
    argv = take_debug_flag(list(sys.argv[1:] if argv is None else argv))
    exit_on_user_error(cli.main, args=argv, prog_name="sft", standalone_mode=True)


if __name__ == "__main__":
    main()
