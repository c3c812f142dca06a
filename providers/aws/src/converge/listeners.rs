//! Listeners, one per Service port, each forwarding to its target group;
//! and the clean-up of listeners and target groups no port wants.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, Certificate, Listener, ProtocolEnum, TargetGroup,
};
use ferrylb_model::ProviderError;

use crate::AwsProvider;
use crate::client::{CallKind, Tolerate};
use crate::desired::{Desired, DesiredListener, TargetKey};

use super::no_retry;

/// The NLB listeners are converged on.
pub(super) struct Placed<'a> {
    pub arn: &'a str,
    /// Just created: it has no listeners yet, no need to ask.
    pub created: bool,
    pub vpc: &'a str,
}

/// What a port's listener needs.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ListenerAction<'a> {
    Create,
    /// The listener of that ARN differs (protocol, target group,
    /// certificate or policy).
    Modify(&'a str),
    Keep(&'a str),
}

/// Whether `x` already is the listener `l` forwarding to `tg_arn`.
pub(super) fn listener_matches(x: &Listener, l: &DesiredListener, tg_arn: &str) -> bool {
    let forwards_to = x
        .default_actions()
        .iter()
        .filter_map(|a| a.target_group_arn())
        .collect::<Vec<_>>();
    let cert = x.certificates().iter().find_map(|c| c.certificate_arn());
    x.protocol().map(|p| p.as_str()) == Some(l.protocol.as_str())
        && forwards_to == [tg_arn]
        && cert == l.tls.as_ref().map(|(c, _)| c.as_str())
        && (l.tls.is_none() || x.ssl_policy() == l.tls.as_ref().map(|(_, p)| p.as_str()))
}

/// What `l`'s port needs, given the NLB's listeners.
pub(super) fn listener_action<'a>(
    existing: &'a [Listener],
    l: &DesiredListener,
    tg_arn: &str,
) -> ListenerAction<'a> {
    match existing
        .iter()
        .find(|x| x.port() == Some(i32::from(l.port)))
    {
        None => ListenerAction::Create,
        Some(x) if !listener_matches(x, l, tg_arn) => {
            ListenerAction::Modify(x.listener_arn().unwrap_or_default())
        }
        Some(x) => ListenerAction::Keep(x.listener_arn().unwrap_or_default()),
    }
}

/// Listeners on ports the Service no longer has.
pub(super) fn unwanted_listeners<'a>(existing: &'a [Listener], d: &Desired) -> Vec<&'a str> {
    existing
        .iter()
        .filter(|x| {
            x.port()
                .and_then(|p| u16::try_from(p).ok())
                .is_none_or(|p| !d.listeners.contains_key(&p))
        })
        .filter_map(|x| x.listener_arn())
        .collect()
}

/// Target groups no port wants, unless an NLB other than `lb_arn` still
/// uses them (a stale NLB's go with it).
pub(super) fn unwanted_target_groups<'a>(
    tgs: &'a [TargetGroup],
    kept: &BTreeSet<&str>,
    lb_arn: &str,
) -> Vec<&'a str> {
    tgs.iter()
        .filter(|t| !kept.contains(t.target_group_name().unwrap_or_default()))
        .filter(|t| t.load_balancer_arns().iter().all(|a| a == lb_arn))
        .filter_map(|t| t.target_group_arn())
        .collect()
}

fn forward(tg_arn: &str) -> Action {
    Action::builder()
        .r#type(ActionTypeEnum::Forward)
        .target_group_arn(tg_arn)
        .build()
}

fn tls_parts(l: &DesiredListener) -> (Option<Vec<Certificate>>, Option<String>) {
    match &l.tls {
        Some((cert, policy)) => (
            Some(vec![Certificate::builder().certificate_arn(cert).build()]),
            Some(policy.clone()),
        ),
        None => (None, None),
    }
}

impl AwsProvider {
    /// Converges target groups, targets and listeners; deletes what no port
    /// wants. Returns the target groups by name with their targets.
    pub(super) async fn converge_listeners(
        &self,
        d: &Desired,
        nlb: &Placed<'_>,
        owned_tgs: &[String],
        resync: bool,
    ) -> Result<BTreeMap<String, (String, BTreeSet<TargetKey>)>, ProviderError> {
        let listeners = if nlb.created {
            Vec::new()
        } else {
            self.clients
                .call_paced(
                    CallKind::ElbDescribe,
                    resync,
                    "elasticloadbalancing:DescribeListeners",
                    self.clients
                        .elb
                        .describe_listeners()
                        .load_balancer_arn(nlb.arn)
                        .send(),
                )
                .await?
                .listeners()
                .to_vec()
        };
        let tgs = self.describe_target_groups(owned_tgs, resync).await?;
        let by_name: BTreeMap<&str, &TargetGroup> = tgs
            .iter()
            .filter_map(|t| Some((t.target_group_name()?, t)))
            .collect();

        let mut result = BTreeMap::new();
        for l in d.listeners.values() {
            let tg = &l.target_group;
            let (tg_arn, targets) = match by_name.get(tg.name.as_str()) {
                Some(existing) => self.converge_target_group(tg, existing, resync).await?,
                None => (
                    self.create_target_group(d, tg, nlb.vpc).await?,
                    BTreeSet::new(),
                ),
            };
            self.sync_targets(&tg_arn, &targets, &tg.targets).await?;
            let arn = match listener_action(&listeners, l, &tg_arn) {
                ListenerAction::Create => self.create_listener(nlb.arn, l, &tg_arn).await?,
                ListenerAction::Modify(arn) => {
                    self.modify_listener(arn, l, &tg_arn).await?;
                    arn.to_owned()
                }
                ListenerAction::Keep(arn) => arn.to_owned(),
            };
            // Extra certificates are not in DescribeListeners' answer: asked
            // for only where some are wanted, and at a resync (one removed
            // from the annotation is taken off then).
            if l.tls.is_some() && (!l.extra_certificates.is_empty() || resync) {
                self.converge_extra_certificates(&arn, l).await?;
            }
            result.insert(tg.name.clone(), (tg_arn, tg.targets.clone()));
        }

        for arn in unwanted_listeners(&listeners, d) {
            self.clients
                .call(
                    CallKind::ElbMutate,
                    "elasticloadbalancing:DeleteListener",
                    self.clients.elb.delete_listener().listener_arn(arn).send(),
                )
                .await
                .tolerate(&["ListenerNotFound"])?;
        }
        let kept: BTreeSet<&str> = result.keys().map(String::as_str).collect();
        for arn in unwanted_target_groups(&tgs, &kept, nlb.arn) {
            self.delete_target_group(arn).await?;
        }
        Ok(result)
    }

    /// Creates `l`'s listener; its ARN. Not retried by the SDK: some
    /// endpoints accept a second listener on the same port.
    async fn create_listener(
        &self,
        lb_arn: &str,
        l: &DesiredListener,
        tg_arn: &str,
    ) -> Result<String, ProviderError> {
        let (certs, policy) = tls_parts(l);
        let out = self
            .clients
            .call(
                CallKind::ElbMutate,
                "elasticloadbalancing:CreateListener",
                self.clients
                    .elb
                    .create_listener()
                    .load_balancer_arn(lb_arn)
                    .port(i32::from(l.port))
                    .protocol(ProtocolEnum::from(l.protocol.as_str()))
                    .set_certificates(certs)
                    .set_ssl_policy(policy)
                    .default_actions(forward(tg_arn))
                    .customize()
                    .config_override(no_retry())
                    .send(),
            )
            .await?;
        Ok(out
            .listeners()
            .first()
            .and_then(|x| x.listener_arn())
            .unwrap_or_default()
            .to_owned())
    }

    /// Makes the listener's certificates beside its default exactly `l`'s.
    async fn converge_extra_certificates(
        &self,
        arn: &str,
        l: &DesiredListener,
    ) -> Result<(), ProviderError> {
        let have: BTreeSet<String> = self
            .clients
            .call(
                CallKind::ElbDescribe,
                "elasticloadbalancing:DescribeListenerCertificates",
                self.clients
                    .elb
                    .describe_listener_certificates()
                    .listener_arn(arn)
                    .send(),
            )
            .await?
            .certificates()
            .iter()
            .filter(|c| c.is_default() != Some(true))
            .filter_map(|c| c.certificate_arn().map(str::to_owned))
            .collect();
        let want: BTreeSet<String> = l.extra_certificates.iter().cloned().collect();
        let cert = |c: &String| Certificate::builder().certificate_arn(c).build();
        let add: Vec<Certificate> = want.difference(&have).map(cert).collect();
        if !add.is_empty() {
            self.clients
                .call(
                    CallKind::ElbMutate,
                    "elasticloadbalancing:AddListenerCertificates",
                    self.clients
                        .elb
                        .add_listener_certificates()
                        .listener_arn(arn)
                        .set_certificates(Some(add))
                        .send(),
                )
                .await?;
        }
        let remove: Vec<Certificate> = have.difference(&want).map(cert).collect();
        if !remove.is_empty() {
            self.clients
                .call(
                    CallKind::ElbMutate,
                    "elasticloadbalancing:RemoveListenerCertificates",
                    self.clients
                        .elb
                        .remove_listener_certificates()
                        .listener_arn(arn)
                        .set_certificates(Some(remove))
                        .send(),
                )
                .await?;
        }
        Ok(())
    }

    async fn modify_listener(
        &self,
        arn: &str,
        l: &DesiredListener,
        tg_arn: &str,
    ) -> Result<(), ProviderError> {
        let (certs, policy) = tls_parts(l);
        self.clients
            .call(
                CallKind::ElbMutate,
                "elasticloadbalancing:ModifyListener",
                self.clients
                    .elb
                    .modify_listener()
                    .listener_arn(arn)
                    .port(i32::from(l.port))
                    .protocol(ProtocolEnum::from(l.protocol.as_str()))
                    .set_certificates(certs)
                    .set_ssl_policy(policy)
                    .default_actions(forward(tg_arn))
                    .send(),
            )
            .await?;
        Ok(())
    }
}
