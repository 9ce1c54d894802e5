//! sio-proxy: sticky-session load balancer (in progress).
