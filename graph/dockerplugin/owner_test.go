package dockerplugin_test

import (
	"os"
	"syscall"
)

func statOwner(st os.FileInfo) (int, int) {
	s := st.Sys().(*syscall.Stat_t)
	return int(s.Uid), int(s.Gid)
}
