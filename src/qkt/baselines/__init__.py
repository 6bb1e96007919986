"""Methods QKT is compared with; each shares the data handling and training loop of the query."""
