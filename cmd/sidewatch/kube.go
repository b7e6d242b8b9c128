package main

import (
	"fmt"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	virtv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// kubeOptions are the usual kubectl connection flags (--kubeconfig,
// --context, -n/--namespace, ...), so the CLI behaves like a kubectl plugin.
type kubeOptions struct {
	flags *genericclioptions.ConfigFlags
}

func newKubeOptions() *kubeOptions {
	return &kubeOptions{flags: genericclioptions.NewConfigFlags(true)}
}

// AddFlags registers the connection flags on a command's flag set.
func (o *kubeOptions) AddFlags(fs *pflag.FlagSet) { o.flags.AddFlags(fs) }

// Namespace is the namespace given with -n, and whether it was given.
func (o *kubeOptions) Namespace() (string, bool) {
	if o.flags.Namespace != nil && *o.flags.Namespace != "" {
		return *o.flags.Namespace, true
	}
	ns, _, err := o.flags.ToRawKubeConfigLoader().Namespace()
	if err != nil || ns == "" {
		return "default", false
	}
	return ns, false
}

// ClusterName is the current kubeconfig context's cluster name.
func (o *kubeOptions) ClusterName() string {
	raw, err := o.flags.ToRawKubeConfigLoader().RawConfig()
	if err != nil {
		return ""
	}
	ctx := raw.CurrentContext
	if o.flags.Context != nil && *o.flags.Context != "" {
		ctx = *o.flags.Context
	}
	if c, ok := raw.Contexts[ctx]; ok {
		return c.Cluster
	}
	return ""
}

// Client returns a controller-runtime client that knows the sidewatch and
// KubeVirt types.
func (o *kubeOptions) Client() (client.Client, error) {
	cfg, err := o.flags.ToRESTConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, v1alpha1.AddToScheme, virtv1.AddToScheme} {
		if err := add(scheme); err != nil {
			return nil, err
		}
	}
	return client.New(cfg, client.Options{Scheme: scheme})
}
