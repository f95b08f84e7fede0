"""`sft slurm RECIPE --nodes N --gpus-per-node G [--profile NAME|auto] [-o job.sbatch]`: write an sbatch script."""

import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("recipe")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@click.option("--nodes", type=int, required=True, help="Number of nodes (one task per node).")
@click.option("--gpus-per-node", type=int, default=None, help="GPUs per node; 0 (or --cpu) for CPU processes.")
@click.option("--cpu", is_flag=True, help="CPU processes with gloo (same as --gpus-per-node 0).")
@click.option("--processes-per-node", type=int, default=None,
              help="Training processes per node. Default: --gpus-per-node, or 1 on CPU.")
@click.option("--profile", default=None,
              help="accelerate_configs/NAME.yaml, a config file, or 'auto' (the planner picks; needs --gpu-memory). "
                   "Default: none on CPU; auto where the planner is installed, else multi_gpu.")
@click.option("--gpu-memory", type=float, default=None, help="GB per GPU, for the planner's fit check.")
@click.option("--model-config", default=None, help="The model's config.json for the planner, when offline.")
@click.option("-o", "script_path", type=click.Path(dir_okay=False), default=None,
              help="Write the script here (default: stdout).")
@click.option("--partition", default=None)
@click.option("--time", "time_limit", default=None, help="Time limit, e.g. 1-00:00:00.")
@click.option("--account", default=None)
@click.option("--qos", default=None)
@click.option("--constraint", default=None)
@click.option("--job-name", default=None)
@click.option("--output", default=None, help="Slurm log file pattern, e.g. logs/%x-%j.out.")
@click.option("--cpus-per-task", type=int, default=None)
@click.option("--sbatch", "sbatch_lines", multiple=True, help="Extra #SBATCH option, e.g. --sbatch --mem=0 (repeat).")
@click.option("--setup", multiple=True, help="Shell line run before training, e.g. 'module load cuda' (repeat).")
@click.option("--signal-seconds", type=int, default=300, show_default=True,
              help="Seconds before the time limit at which Slurm warns the job (it checkpoints and requeues).")
@click.option("--python", "python", default=None, help="Python of the environment to run in (default: this one).")
def command(recipe, overrides, nodes, gpus_per_node, cpu, processes_per_node, profile, gpu_memory, model_config,
            script_path, partition, time_limit, account, qos, constraint, job_name, output, cpus_per_task,
            sbatch_lines, setup, signal_seconds, python):
    """Write an sbatch script that trains RECIPE on N nodes: one task per node running `accelerate launch` with
    its own machine rank, rendezvous on the first host, checkpoint-and-requeue on preemption.
    Recipe keys can be overridden after RECIPE, as with `sft train`."""
    import shlex
    import sys
    from pathlib import Path

    from sft.errors import UserError
    from sft.launch.slurm import SlurmJob, build_script, check_fit, check_job, write_script

    if gpus_per_node is None and not cpu:
        raise UserError("--gpus-per-node is required (0 or --cpu for CPU processes)")
    if cpu and gpus_per_node:
        raise UserError(f"--cpu and --gpus-per-node {gpus_per_node}: choose one")
    job = SlurmJob(recipe=recipe, overrides=list(overrides), nodes=nodes, gpus_per_node=0 if cpu else gpus_per_node,
                   processes_per_node=processes_per_node, partition=partition, time=time_limit, account=account,
                   qos=qos, constraint=constraint, job_name=job_name, output=output, cpus_per_task=cpus_per_task,
                   sbatch_lines=list(sbatch_lines), setup=list(setup), signal_seconds=signal_seconds,
                   python=python or sys.executable)
    job.profile = profile
    check_job(job)  # flags first: they fail in a blink, before the recipe is read
    job.profile = check_fit(job, profile, gpu_memory, model_config)
    text = build_script(job, command_line="sft slurm " + " ".join(shlex.quote(a) for a in sys.argv[2:]))
    if script_path:
        write_script(text, Path(script_path))
        click.echo(f"wrote {script_path}: {job.nodes} node(s) x {job.per_node} process(es)"
                   f"{', profile ' + Path(job.profile).stem if job.profile else ''}; submit with: sbatch {script_path}",
                   err=True)
    else:
        click.echo(text, nl=False)
