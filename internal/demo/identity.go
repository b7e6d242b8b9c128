package demo

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sidewatch/sidewatch/internal/controlplane"
)

// serviceAccountKubeconfig writes a kubeconfig that authenticates as a
// service account, as the operator's and the agent's pods would; with pod
// set, the token is bound to it and carries its node (see
// controlplane.Env.ServiceAccountConfig).
func serviceAccountKubeconfig(ctx context.Context, env *controlplane.Env, namespace, sa string, pod *corev1.Pod, path string) error {
	cfg, err := env.ServiceAccountConfig(ctx, namespace, sa, pod)
	if err != nil {
		return err
	}
	return controlplane.WriteKubeconfig(cfg, path)
}

// agentPod stands for the agent's DaemonSet pod on node: the API server binds
// the agent's token to it. No kubelet runs it; the agent runs as a local
// process with that identity.
func agentPod(namespace, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: "sidewatch-agent-" + node,
			Labels: map[string]string{"app.kubernetes.io/name": "sidewatch", "app.kubernetes.io/component": "node-agent"}},
		Spec: corev1.PodSpec{
			NodeName:           node,
			ServiceAccountName: "sidewatch-agent",
			HostPID:            true,
			Containers:         []corev1.Container{{Name: "agent", Image: "ghcr.io/sidewatch/sidewatch-agent:dev"}},
		},
	}
}
