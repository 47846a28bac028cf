// Package fused is the protocol of the lazy FUSE server, a long-lived
// process of its own (`s3snap agent fused`, started by the agent; package
// lazy/fused/server) that owns every lazy mount of one agent root, and
// the agent's client of it.
//
// Design: a FUSE mount lives as long as the process that reads its
// /dev/fuse descriptor. When that was the agent, every restart, crash, OOM
// kill or upgrade of the agent cut the connection under running containers
// ("transport endpoint is not connected", SIGBUS for mapped binaries), and
// a kill during a mount could leave the agent in D state waiting on its
// own mount. So the mounts moved to this server, which does nothing but
// serve them: it holds each layer's index, the verified chunk cache, the
// prefetch and the check of each whole layer against the image's diff ID
// (a layer that fails it is bad: EIO, and List says so), and is not a
// child that dies with the agent (its own session and process group;
// systemd's KillMode=process leaves it alone).
// The agent keeps the decisions (which layer to mount, its records under
// <root>/lazy/mounts, never showing a lazy layer unmounted) and asks the
// server over a unix socket; on start it re-adopts the server's live
// mounts instead of mounting anew. The other known design, handing the
// /dev/fuse descriptors over to a successor (systemd's fd store,
// FUSE_NOTIFY_RESEND), needs kernels >= 6.9 to lose no request, node IDs
// stable across processes and a change to go-fuse to skip INIT; a second
// process needs none of that and works on any kernel with FUSE.
//
// No process waits on a mount it serves itself: the server never makes a
// system call into its own mounts (it mounts with mount(2) and answers
// INIT itself; go-fuse's mount-time poll probe, an open inside the new
// mount, is skipped), and the agent serves none (what it reads from lazy
// layers, the attributes of a parent's directories, the server answers).
// A kill of either at any moment so leaves no thread waiting for good: a
// request the killed agent made is answered by the live server, and the
// server's death aborts its connections (ENOTCONN).
//
// Protocol: JSON over HTTP over the unix socket <root>/fused/fused.sock
// (directory 0700, socket 0600); each side checks the other is the same
// user (root) with SO_PEERCRED. Mount and Unmount are idempotent; List
// reports every mount with its state and cached bytes; Info reports the
// server's version; Shutdown unmounts everything and exits (optionally
// only when no mount is left).
//
// Upgrades of the server itself: the agent replaces a server of another
// version only when it holds no mount; otherwise it keeps using it (it
// logs so) and the new version takes over once the node has no lazy
// mount, at the next agent start. If the server dies, its mounts fail
// with ENOTCONN; the agent notices, starts a new server and mounts every
// recorded layer again (new containers get working mounts; the running
// ones keep the dead ones).
package fused

import (
	"path/filepath"

	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/lazy"
)

// Mount asks for one lazy mount: layer Layer, through its encoded TOC
// kept under <root>/lazy/toc by its digest TOC, at Dir, a snapshot's
// directory under <root>/snapshots.
type Mount struct {
	Name  string        `json:"name"`  // the snapshot (a chain ID), for logs
	Dir   string        `json:"dir"`   // the mount point
	Layer digest.Digest `json:"layer"` // the layer it presents
	TOC   digest.Digest `json:"toc"`   // its checked TOC, by digest
	Host  string        `json:"host"`  // the registry host, to find its stores
	Store string        `json:"store"` // the store the index came from
	// Dirs are the attributes of directories the layer implies but does
	// not hold (lazy.WithImplicitDirs).
	Dirs map[string]lazy.Entry `json:"dirs,omitempty"`
	// DiffID is the layer's diff ID in the image (the agent checked it
	// makes the chain ID): the TOC must name it, and once the prefetch has
	// the layer whole the server checks the tar the index rebuilds hashes
	// to it (lazy.Layer.Verify); a mismatch makes the layer bad (reads
	// fail with EIO). Empty (a record of an older agent): the TOC's.
	DiffID digest.Digest `json:"diff_id,omitempty"`
	// Verified says the agent verified this TOC already
	// ([lazy] verify_before_start): the server does not again.
	Verified bool `json:"verified,omitempty"`
}

// State is one mount the server holds.
type State struct {
	Mount
	// Mounted is false when the mount point no longer shows it (someone
	// unmounted it): a Mount of it mounts again.
	Mounted     bool  `json:"mounted"`
	CachedBytes int64 `json:"cached_bytes"` // layer content on local disk
	Inodes      int64 `json:"inodes"`
	// Bad is why the layer failed verification (its reads fail with EIO);
	// empty if it did not (yet).
	Bad string `json:"bad,omitempty"`
}

// Info describes the running server.
type Info struct {
	Version string `json:"version"`
	PID     int    `json:"pid"`
	Mounts  int    `json:"mounts"`
}

// Dir is the server's directory under an agent root: socket, lock, pid
// file and log.
func Dir(root string) string { return filepath.Join(root, "fused") }

// SocketPath is the server's socket under an agent root.
func SocketPath(root string) string { return filepath.Join(Dir(root), "fused.sock") }

// LogPath is where the agent sends a server's output.
func LogPath(root string) string { return filepath.Join(Dir(root), "fused.log") }

// PIDPath holds the running server's process ID.
func PIDPath(root string) string { return filepath.Join(Dir(root), "fused.pid") }

// LockPath is the file a running server holds locked.
func LockPath(root string) string { return filepath.Join(Dir(root), "lock") }
