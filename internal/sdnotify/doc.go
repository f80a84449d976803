// Package sdnotify tells systemd about a service's state over the
// notification socket of sd_notify(3): a unit with Type=notify starts
// the service with NOTIFY_SOCKET naming a unix datagram socket (a path,
// or "@name" in the abstract namespace), and the service sends
// newline-separated assignments such as "READY=1" or "STOPPING=1" to it.
//
// Without NOTIFY_SOCKET (not started by systemd, or not Type=notify)
// Notify does nothing and reports so; a send that fails is an error the
// caller may log, never a reason to stop serving.
package sdnotify
