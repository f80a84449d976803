package nbdattach

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// serverPIDDir holds nbdN.pid for each device a map process serves.
const serverPIDDir = "/run/rbd-nbd-graph"

func serverPIDFile(index int) string {
	return filepath.Join(serverPIDDir, fmt.Sprintf("nbd%d.pid", index))
}

// WriteServerPID records this process as the server of device index.
func WriteServerPID(index int) error {
	if err := os.MkdirAll(serverPIDDir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(serverPIDFile(index), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
}

// RemoveServerPID removes the record of device index if it names this
// process.
func RemoveServerPID(index int) {
	// Only our own record: a reattached server may have replaced it.
	if readServerPID(index) == os.Getpid() {
		os.Remove(serverPIDFile(index))
	}
}

// readServerPID is the recorded server of device index, or 0.
func readServerPID(index int) int {
	b, err := os.ReadFile(serverPIDFile(index))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	return pid
}

// ServerPID is the live process serving device index: the recorded one,
// else the one the kernel names, else 0.
func ServerPID(st nbd.DeviceStatus) int {
	if pid := readServerPID(st.Index); pid > 0 && Running(pid) {
		return pid
	}
	if st.PID > 0 && Running(st.PID) {
		return st.PID
	}
	return 0
}

// Running: pid exists and is not a zombie.
func Running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and
	// may itself contain ") ".
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}
