"""Infrastructure shared by the web, worker and beat processes: configuration,
store clients, logging, metrics. Nothing here holds a money rule."""
