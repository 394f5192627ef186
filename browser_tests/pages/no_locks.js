/* Hides Web Locks, as in browsers without them: the shared connection's leader holds a lease. */
Object.defineProperty(navigator, "locks", {value: undefined, configurable: true});
