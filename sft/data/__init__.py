"""The rows the trainer sees: sources (files or Hub datasets) read into Arrow, formats normalised, the recipe's
mixture, its eval split, and the prepared data (sft.data.prepare), once per node under a distributed launch."""
