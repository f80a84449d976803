package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// SocketEnv is the environment variable systemd sets for Type=notify units.
const SocketEnv = "NOTIFY_SOCKET"

// Messages for Notify (sd_notify(3)).
const (
	// Ready says start-up is done: the service accepts requests.
	Ready = "READY=1"
	// Stopping says the service is shutting down (the handover began).
	Stopping = "STOPPING=1"
)

// ErrNoSocket is returned when NOTIFY_SOCKET is not set: nothing is sent.
var ErrNoSocket = errors.New("sdnotify: " + SocketEnv + " is not set")

// Notify sends state (one or more "KEY=VALUE" lines) to the socket that
// NOTIFY_SOCKET names. It returns ErrNoSocket when it is unset.
func Notify(state string) error {
	return NotifySocket(os.Getenv(SocketEnv), state)
}

// NotifySocket sends state to socket, a filesystem path or "@name" for the
// abstract namespace; "" gives ErrNoSocket.
func NotifySocket(socket, state string) error {
	if socket == "" {
		return ErrNoSocket
	}
	if !strings.HasPrefix(socket, "/") && !strings.HasPrefix(socket, "@") {
		// systemd also allows vsock: addresses; we only run under a
		// local systemd.
		return fmt.Errorf("sdnotify: %s=%q: want a socket path or @abstract name", SocketEnv, socket)
	}
	addr := &net.UnixAddr{Name: socket, Net: "unixgram"}
	if socket[0] == '@' {
		addr.Name = "\x00" + socket[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	defer conn.Close()
	// A datagram to a full queue blocks; systemd reads its queue at once,
	// but never let a stuck manager hold up the service.
	conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	return nil
}
