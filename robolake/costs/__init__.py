"""What things cost: prices (`prices`), the instance recommender (`recommend`), the cost of
each run (`runs`) and monthly budgets (`budgets`). Plain functions; no Dagster."""
