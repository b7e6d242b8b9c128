// Package controlplane runs a real kube-apiserver and etcd for tests and the
// demo. The binaries are built once from the Go module proxy by
// hack/control-plane.sh into a cache directory outside the repository;
// envtest then starts them in a few seconds.
package controlplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// binaries the control plane needs; kube-controller-manager runs only its
// garbage collector, on request (Env.StartGarbageCollector).
var binaries = []string{"kube-apiserver", "etcd", "kubectl", "kube-controller-manager"}

// RepoRoot is the repository's top directory, found from this source file so
// that tests started from any package directory agree on it.
func RepoRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("controlplane: cannot locate source file")
	}
	root := filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return "", fmt.Errorf("controlplane: repository root not found at %s: %w", root, err)
	}
	return root, nil
}

// Assets returns a directory holding kube-apiserver, etcd, kubectl and
// kube-controller-manager. It
// honours KUBEBUILDER_ASSETS when that directory has all three; otherwise it
// runs hack/control-plane.sh, which builds them once (about seven minutes on a
// cold cache) under a file lock, so parallel test packages wait for one build.
func Assets(ctx context.Context) (string, error) {
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" && hasAll(dir) {
		return dir, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, "hack", "control-plane.sh"))
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("controlplane: hack/control-plane.sh: %w\n%s", err, tail(stderr.String(), 4000))
	}
	dir := strings.TrimSpace(lastLine(stdout.String()))
	if !hasAll(dir) {
		return "", fmt.Errorf("controlplane: hack/control-plane.sh printed %q, which lacks %v", dir, binaries)
	}
	return dir, nil
}

func hasAll(dir string) bool {
	for _, b := range binaries {
		st, err := os.Stat(filepath.Join(dir, b))
		if err != nil || st.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// CRDDirs are the CRD directories installed into every control plane: the
// sidewatch CRDs and KubeVirt's VMI and VMIM CRDs.
func CRDDirs() ([]string, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	return []string{
		filepath.Join(root, "config", "crd", "bases"),
		filepath.Join(root, "config", "crd", "external"),
	}, nil
}

// Env is a running control plane.
type Env struct {
	// Config reaches the API server as a cluster administrator.
	Config *rest.Config
	// Assets is the directory holding the binaries (kubectl among them).
	Assets string
	env    *envtest.Environment
	// stops are run by Stop before the control plane goes down.
	stops []func()
}

// Options tune Start.
type Options struct {
	// ExtraAPIServerArgs are appended to kube-apiserver's flags, e.g.
	// "--service-account-extend-token-expiration=false".
	ExtraAPIServerArgs map[string]string
	// CRDDirs overrides the installed CRDs; nil means CRDDirs().
	CRDDirs []string
}

// Start builds the binaries if needed, starts etcd and kube-apiserver and
// installs the CRDs. Stop it with Env.Stop.
func Start(ctx context.Context, opts Options) (*Env, error) {
	assets, err := Assets(ctx)
	if err != nil {
		return nil, err
	}
	reapOrphans(assets)
	dirs := opts.CRDDirs
	if dirs == nil {
		if dirs, err = CRDDirs(); err != nil {
			return nil, err
		}
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:        dirs,
		ErrorIfCRDPathMissing:    true,
		BinaryAssetsDirectory:    assets,
		ControlPlaneStartTimeout: 2 * time.Minute,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	if len(opts.ExtraAPIServerArgs) > 0 {
		args := env.ControlPlane.GetAPIServer().Configure()
		for k, v := range opts.ExtraAPIServerArgs {
			args.Set(k, v)
		}
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("controlplane: start: %w", err)
	}
	return &Env{Config: cfg, Assets: assets, env: env}, nil
}

// Stop stops kube-apiserver and etcd and removes their data.
func (e *Env) Stop() error {
	if e == nil || e.env == nil {
		return nil
	}
	for _, stop := range e.stops {
		stop()
	}
	e.stops = nil
	return e.env.Stop()
}

// Kubeconfig writes a kubeconfig for the cluster administrator to path.
func (e *Env) Kubeconfig(path string) error {
	user, err := e.env.ControlPlane.AddUser(envtest.User{Name: "sidewatch-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("controlplane: add user: %w", err)
	}
	data, err := user.KubeConfig()
	if err != nil {
		return fmt.Errorf("controlplane: kubeconfig: %w", err)
	}
	return os.WriteFile(path, data, 0o600)
}

// AddUser returns a rest.Config for a user with the given name and groups
// (authenticated by client certificate), for testing authorization.
func (e *Env) AddUser(name string, groups ...string) (*rest.Config, error) {
	user, err := e.env.ControlPlane.AddUser(envtest.User{Name: name, Groups: groups}, nil)
	if err != nil {
		return nil, fmt.Errorf("controlplane: add user %s: %w", name, err)
	}
	return user.Config(), nil
}

// Kubectl is the path of the kubectl binary built with the control plane.
func (e *Env) Kubectl() string { return filepath.Join(e.Assets, "kubectl") }
