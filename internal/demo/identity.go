package demo

import (
	"context"
	"fmt"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// serviceAccountKubeconfig writes a kubeconfig that authenticates as a
// service account, as the operator's and the agent's pods would. With pod
// set, the token is bound to that pod, so it carries the pod's node name:
// the admission policy that keeps an agent to its own node reads it.
func serviceAccountKubeconfig(ctx context.Context, c client.Client, cfg *rest.Config, namespace, sa string, pod *corev1.Pod, path string) error {
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](24 * 3600)}}
	if pod != nil {
		if err := c.Create(ctx, pod); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create pod %s: %w", pod.Name, err)
		}
		if err := c.Get(ctx, client.ObjectKeyFromObject(pod), pod); err != nil {
			return err
		}
		tr.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	account := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: sa}}
	if err := c.SubResource("token").Create(ctx, account, tr); err != nil {
		return fmt.Errorf("token for %s/%s: %w", namespace, sa, err)
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["demo"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos[sa] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	kc.Contexts["demo"] = &clientcmdapi.Context{Cluster: "demo", AuthInfo: sa, Namespace: namespace}
	kc.CurrentContext = "demo"
	return clientcmd.WriteToFile(*kc, path)
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
