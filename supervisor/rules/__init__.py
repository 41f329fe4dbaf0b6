"""The pure rules of a model's life: the lifecycle table, which profile serves, where a
replica's request goes. No I/O, no clock: everything above calls them."""
