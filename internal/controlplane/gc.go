package controlplane

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// StartGarbageCollector runs kube-controller-manager with only its garbage
// collector against this control plane, so that objects with owner
// references are deleted with their owners as in a real cluster (envtest
// runs no controllers). It stops when ctx ends or the Env stops.
func (e *Env) StartGarbageCollector(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "sidewatch-gc-")
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := e.Kubeconfig(kubeconfig); err != nil {
		os.RemoveAll(dir)
		return err
	}
	cmd := exec.Command(filepath.Join(e.Assets, "kube-controller-manager"),
		"--kubeconfig="+kubeconfig,
		"--authentication-kubeconfig="+kubeconfig,
		"--authorization-kubeconfig="+kubeconfig,
		"--controllers=garbagecollector",
		"--leader-elect=false",
		"--secure-port=0",
		"--concurrent-gc-syncs=5",
		"--v=0",
	)
	log, err := os.Create(filepath.Join(dir, "kube-controller-manager.log"))
	if err != nil {
		os.RemoveAll(dir)
		return err
	}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		os.RemoveAll(dir)
		return fmt.Errorf("controlplane: start kube-controller-manager: %w", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		log.Close()
		close(done)
	}()
	stop := func() {
		_ = cmd.Process.Kill()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
		os.RemoveAll(dir)
	}
	e.stops = append(e.stops, stop)
	go func() {
		select {
		case <-ctx.Done():
			stop()
		case <-done:
		}
	}()
	return nil
}
