"""Volume limits: one moving window per employee, in process or in Redis."""
