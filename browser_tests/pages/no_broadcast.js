/* Hides BroadcastChannel, as in IE and old browsers: shared pages talk through storage events. */
window.BroadcastChannel = undefined;
