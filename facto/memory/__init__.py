"""Memory, measured and predicted: the meter behind every stored-bytes number (`meter`), independent
checks of it (`audit`), what a config stores per layer (`analysis`) and inside one layer (`explain`),
the peak of one training step (`step_peak`), and the largest batch under a budget (`plan`, `budget`,
`verify`).
"""
