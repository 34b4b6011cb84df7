//! The canonical protobuf JSON mapping of the API's messages: what the
//! command line prints with `--json` and what a webhook carries. It is the
//! mapping grpcurl, a REST transcoder and every protobuf library read and
//! write: lowerCamelCase names, enums by name, 64-bit integers as strings,
//! times as RFC 3339 in UTC.
//!
//! Every field is present: scalars at their default, empty lists and maps,
//! and a message that is not set as `null`, so a script finds each field
//! it looks for whatever the payment's state.
//!
//! The mapping is read from the descriptor set the build makes (the one
//! server reflection serves), so it follows the contract without code of
//! its own per message.

use std::sync::{Arc, OnceLock};

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, SerializeOptions};
use serde_json::Value;

use super::convert;
use super::pb;
use crate::domain::events::PaymentEvent;
use crate::domain::payment::Payment;

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET)
            .expect("the build's own descriptor set decodes")
    })
}

/// `message` in the canonical JSON mapping, every field present. `Err`
/// when a value has no JSON form (a time outside years 1 to 9999).
pub fn to_json<M: Message + prost::Name>(message: &M) -> Result<Value, String> {
    let descriptor = pool()
        .get_message_by_name(&M::full_name())
        .expect("every message of the API is in the build's descriptor set");
    let dynamic = DynamicMessage::decode(descriptor.clone(), message.encode_to_vec().as_slice())
        .expect("a message decodes as its own type");
    let options = SerializeOptions::new().skip_default_fields(false);
    let mut value = dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|error| format!("{} has no JSON form: {error}", M::full_name()))?;
    unset_messages_as_null(&descriptor, &mut value);
    Ok(value)
}

/// The serializer leaves out a message field that is not set; the mapping
/// allows `null` for it, and a script is better served by a field that is
/// there. Well-known types (times) are strings and stay as they are.
fn unset_messages_as_null(descriptor: &MessageDescriptor, value: &mut Value) {
    if descriptor.full_name().starts_with("google.protobuf.") {
        return;
    }
    let Value::Object(object) = value else {
        return;
    };
    for field in descriptor.fields() {
        let Kind::Message(inner) = field.kind() else {
            continue;
        };
        let name = field.json_name();
        if field.is_map() {
            // A map's entry type: recurse into message values.
            let value_kind = inner.map_entry_value_field().kind();
            if let (Kind::Message(values), Some(Value::Object(map))) =
                (value_kind, object.get_mut(name))
            {
                for entry in map.values_mut() {
                    unset_messages_as_null(&values, entry);
                }
            }
        } else if field.is_list() {
            if let Some(Value::Array(items)) = object.get_mut(name) {
                for item in items {
                    unset_messages_as_null(&inner, item);
                }
            }
        } else {
            match object.get_mut(name) {
                Some(present) => unset_messages_as_null(&inner, present),
                None => {
                    object.insert(name.to_owned(), Value::Null);
                }
            }
        }
    }
}

/// A webhook's body: [`pb::WebhookEvent`] in the canonical JSON mapping.
pub fn webhook_body(event: &PaymentEvent, payment: Option<&Payment>) -> Result<Vec<u8>, String> {
    webhook_body_of(
        convert::event_to_pb(event, None),
        payment.map(convert::payment_to_pb),
    )
}

/// [`webhook_body`] of the API's own messages (what a client has).
pub fn webhook_body_of(
    mut event: pb::PaymentEvent,
    payment: Option<pb::Payment>,
) -> Result<Vec<u8>, String> {
    // Delivery state is the sender's business, not the receiver's.
    event.deliveries.clear();
    let body = pb::WebhookEvent {
        id: event.name.clone(),
        r#type: event.r#type.clone(),
        sequence: event.sequence,
        create_time: event.time,
        event: Some(event),
        payment,
    };
    Ok(to_json(&body)?.to_string().into_bytes())
}

/// [`webhook_body`] as the webhook sink takes it.
pub fn webhook_body_format() -> crate::webhooks::BodyFormat {
    Arc::new(webhook_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_present_in_the_canonical_mapping() {
        let payment = pb::Payment {
            name: "accounts/acme/payments/p1".into(),
            amount: Some(pb::Money {
                currency_code: "USD".into(),
                minor_units: 1250,
            }),
            state: pb::payment::State::Processed as i32,
            create_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5_000_000,
            }),
            refunds: vec![pb::Refund {
                refund_id: "r1".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let value = to_json(&payment).unwrap();
        assert_eq!(value["name"], "accounts/acme/payments/p1");
        assert_eq!(value["state"], "STATE_PROCESSED");
        // 64-bit integers are strings; times RFC 3339 in UTC.
        assert_eq!(value["amount"]["minorUnits"], "1250");
        assert_eq!(value["amount"]["currencyCode"], "USD");
        assert_eq!(value["createTime"], "2023-11-14T22:13:20.005Z");
        // Defaults, empty lists and maps, unset messages: all present.
        assert_eq!(value["failureReason"], "");
        assert_eq!(value["metadata"], serde_json::json!({}));
        assert_eq!(value["history"], serde_json::json!([]));
        assert!(value["watch"].is_null() && value.get("watch").is_some());
        assert!(value["updateTime"].is_null() && value.get("updateTime").is_some());
        assert!(value["refunds"][0]["amount"].is_null());
        assert_eq!(value["refunds"][0]["state"], "STATE_UNSPECIFIED");
        // Every field of the contract, no more.
        let fields = pool()
            .get_message_by_name("payvisor.v1.Payment")
            .unwrap()
            .fields()
            .count();
        assert_eq!(value.as_object().unwrap().len(), fields);
    }

    #[test]
    fn a_webhook_carries_its_event_and_the_payment_with_its_metadata() {
        use crate::domain::events::Change;
        use crate::domain::payment::PaymentState;
        use crate::domain::{parse_payment_name, Currency, Money, Timestamp};
        let event = PaymentEvent {
            payment: parse_payment_name("accounts/acme/payments/p1").unwrap(),
            seq: 2,
            at: Timestamp::from_unix_millis(1_000),
            amount: Money::from_minor(Currency::from_code("USD").unwrap(), 100),
            state: PaymentState::Failed,
            change: Change::Payment {
                from: Some(PaymentState::Sent),
                to: PaymentState::Failed,
                cause: "operator_fail".into(),
                failure_reason: Some("bank lost it".into()),
            },
            actor: Some("oncall-7".into()),
            trace: None,
        };
        let body: Value = serde_json::from_slice(&webhook_body(&event, None).unwrap()).unwrap();
        assert_eq!(body["id"], "accounts/acme/payments/p1/events/2");
        assert_eq!(body["type"], "payment.failed");
        assert_eq!(body["sequence"], "2");
        assert_eq!(body["createTime"], "1970-01-01T00:00:01Z");
        assert_eq!(body["event"]["actor"], "oncall-7");
        assert_eq!(body["event"]["fromState"], "STATE_SENT");
        assert_eq!(body["event"]["failureReason"], "bank lost it");
        assert_eq!(body["event"]["deliveries"], serde_json::json!([]));
        assert!(body["payment"].is_null());
        // With the payment as GetPayment returns it, metadata included.
        let payment = pb::Payment {
            name: "accounts/acme/payments/p1".into(),
            state: pb::payment::State::Failed as i32,
            metadata: [("order_id".to_owned(), "ord-7".to_owned())].into(),
            ..Default::default()
        };
        let mut listed = convert::event_to_pb(&event, None);
        listed.deliveries.push(pb::EventDelivery::default());
        let body = webhook_body_of(listed, Some(payment)).unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["payment"]["name"], "accounts/acme/payments/p1");
        assert_eq!(body["payment"]["state"], "STATE_FAILED");
        assert_eq!(body["payment"]["metadata"]["order_id"], "ord-7");
        // Delivery state is not the receiver's.
        assert_eq!(body["event"]["deliveries"], serde_json::json!([]));
    }
}
