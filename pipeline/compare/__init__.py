"""Adapter comparison grids: `runner` trains, merges and evaluates each cell; `table` reads the cells back."""
