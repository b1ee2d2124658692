//! Language names as Whisper writes them (`english`, `haitian creole`) and their codes (`en`,
//! `ht`): OpenAI's `verbose_json` answer names the language; `transcriptions.language` holds
//! a code, as the other hooks and the built-in transcriber record it.

/// Whisper's languages: its code and its name for each, in Whisper's order.
const LANGUAGES: &[(&str, &str)] = &[
    ("en", "english"),
    ("zh", "chinese"),
    ("de", "german"),
    ("es", "spanish"),
    ("ru", "russian"),
    ("ko", "korean"),
    ("fr", "french"),
    ("ja", "japanese"),
    ("pt", "portuguese"),
    ("tr", "turkish"),
    ("pl", "polish"),
    ("ca", "catalan"),
    ("nl", "dutch"),
    ("ar", "arabic"),
    ("sv", "swedish"),
    ("it", "italian"),
    ("id", "indonesian"),
    ("hi", "hindi"),
    ("fi", "finnish"),
    ("vi", "vietnamese"),
    ("he", "hebrew"),
    ("uk", "ukrainian"),
    ("el", "greek"),
    ("ms", "malay"),
    ("cs", "czech"),
    ("ro", "romanian"),
    ("da", "danish"),
    ("hu", "hungarian"),
    ("ta", "tamil"),
    ("no", "norwegian"),
    ("th", "thai"),
    ("ur", "urdu"),
    ("hr", "croatian"),
    ("bg", "bulgarian"),
    ("lt", "lithuanian"),
    ("la", "latin"),
    ("mi", "maori"),
    ("ml", "malayalam"),
    ("cy", "welsh"),
    ("sk", "slovak"),
    ("te", "telugu"),
    ("fa", "persian"),
    ("lv", "latvian"),
    ("bn", "bengali"),
    ("sr", "serbian"),
    ("az", "azerbaijani"),
    ("sl", "slovenian"),
    ("kn", "kannada"),
    ("et", "estonian"),
    ("mk", "macedonian"),
    ("br", "breton"),
    ("eu", "basque"),
    ("is", "icelandic"),
    ("hy", "armenian"),
    ("ne", "nepali"),
    ("mn", "mongolian"),
    ("bs", "bosnian"),
    ("kk", "kazakh"),
    ("sq", "albanian"),
    ("sw", "swahili"),
    ("gl", "galician"),
    ("mr", "marathi"),
    ("pa", "punjabi"),
    ("si", "sinhala"),
    ("km", "khmer"),
    ("sn", "shona"),
    ("yo", "yoruba"),
    ("so", "somali"),
    ("af", "afrikaans"),
    ("oc", "occitan"),
    ("ka", "georgian"),
    ("be", "belarusian"),
    ("tg", "tajik"),
    ("sd", "sindhi"),
    ("gu", "gujarati"),
    ("am", "amharic"),
    ("yi", "yiddish"),
    ("lo", "lao"),
    ("uz", "uzbek"),
    ("fo", "faroese"),
    ("ht", "haitian creole"),
    ("ps", "pashto"),
    ("tk", "turkmen"),
    ("nn", "nynorsk"),
    ("mt", "maltese"),
    ("sa", "sanskrit"),
    ("lb", "luxembourgish"),
    ("my", "myanmar"),
    ("bo", "tibetan"),
    ("tl", "tagalog"),
    ("mg", "malagasy"),
    ("as", "assamese"),
    ("tt", "tatar"),
    ("haw", "hawaiian"),
    ("ln", "lingala"),
    ("ha", "hausa"),
    ("ba", "bashkir"),
    ("jw", "javanese"),
    ("su", "sundanese"),
    ("yue", "cantonese"),
];

/// Other names Whisper takes for some of them.
const ALIASES: &[(&str, &str)] = &[
    ("burmese", "my"),
    ("valencian", "ca"),
    ("flemish", "nl"),
    ("haitian", "ht"),
    ("letzeburgesch", "lb"),
    ("pushto", "ps"),
    ("panjabi", "pa"),
    ("moldavian", "ro"),
    ("moldovan", "ro"),
    ("sinhalese", "si"),
    ("castilian", "es"),
    ("mandarin", "zh"),
];

/// The code of the language `value` names: a Whisper language name or alias (in any case)
/// becomes its code, a code stays as it is, and anything else is kept as given (trimmed).
/// `None` for an empty value.
pub(crate) fn language_code(value: &str) -> Option<String> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    let lower = value.to_lowercase();
    let code = LANGUAGES
        .iter()
        .find(|(code, name)| *code == lower || *name == lower)
        .map(|(code, _)| *code)
        .or_else(|| {
            ALIASES
                .iter()
                .find(|(name, _)| *name == lower)
                .map(|(_, code)| *code)
        });
    Some(code.map_or_else(|| value.to_owned(), str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_codes() {
        assert_eq!(language_code("english").as_deref(), Some("en"));
        assert_eq!(language_code("English").as_deref(), Some("en"));
        assert_eq!(language_code("haitian creole").as_deref(), Some("ht"));
        assert_eq!(language_code("cantonese").as_deref(), Some("yue"));
        assert_eq!(language_code(" german\n").as_deref(), Some("de"));
        assert_eq!(
            language_code("castilian").as_deref(),
            Some("es"),
            "an alias"
        );
    }

    #[test]
    fn codes_stay_and_unknown_values_are_kept() {
        assert_eq!(language_code("en").as_deref(), Some("en"));
        assert_eq!(language_code("DE").as_deref(), Some("de"));
        assert_eq!(language_code("haw").as_deref(), Some("haw"));
        assert_eq!(language_code("en-US").as_deref(), Some("en-US"));
        assert_eq!(language_code("klingon").as_deref(), Some("klingon"));
        assert_eq!(language_code("  "), None);
    }

    #[test]
    fn the_table_has_every_whisper_language_once() {
        assert_eq!(LANGUAGES.len(), 100);
        for (i, (code, name)) in LANGUAGES.iter().enumerate() {
            assert!(
                LANGUAGES[i + 1..]
                    .iter()
                    .all(|(c, n)| c != code && n != name),
                "{code} {name}"
            );
        }
        for (alias, code) in ALIASES {
            assert!(LANGUAGES.iter().any(|(c, _)| c == code), "{alias}");
        }
    }
}
