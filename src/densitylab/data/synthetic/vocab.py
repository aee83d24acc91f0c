"""Embedded vocabularies of the synthetic corpus (plain ASCII, no periods inside values so sentences
split cleanly): first, middle and last names, cities, universities, majors, companies with their
headquarters, months, and the attribute names."""

MALE_FIRST_NAMES = (
    "James", "John", "Robert", "Michael", "William", "David", "Richard", "Joseph", "Thomas",
    "Charles", "Daniel", "Matthew", "Anthony", "Mark", "Donald", "Steven", "Paul", "Andrew",
    "Joshua", "Kenneth", "Kevin", "Brian", "George", "Timothy", "Ronald", "Edward", "Jason",
    "Jeffrey", "Ryan", "Jacob", "Gary", "Nicholas", "Eric", "Jonathan", "Stephen", "Larry",
    "Justin", "Scott", "Brandon", "Benjamin",
)  # fmt: skip

FEMALE_FIRST_NAMES = (
    "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah",
    "Karen", "Lisa", "Nancy", "Betty", "Margaret", "Sandra", "Ashley", "Kimberly", "Emily",
    "Donna", "Michelle", "Carol", "Amanda", "Dorothy", "Melissa", "Deborah", "Stephanie",
    "Rebecca", "Sharon", "Laura", "Cynthia", "Kathleen", "Amy", "Angela", "Shirley", "Anna",
    "Brenda", "Pamela", "Emma", "Nicole", "Helen",
)  # fmt: skip

MIDDLE_NAMES = (
    "Alexander", "Avery", "Blake", "Cameron", "Casey", "Dakota", "Drew", "Elliot", "Emerson",
    "Finley", "Francis", "Harper", "Hayden", "Jamie", "Jesse", "Jordan", "Kai", "Kendall", "Lane",
    "Micah", "Logan", "Marion", "Noel", "Peyton", "Quinn", "Reese", "Riley", "Robin", "Rowan",
    "Sage", "Sawyer", "Shannon", "Skyler", "Spencer", "Sydney", "Tatum", "Terry", "Tracy", "Wren",
    "Ainsley", "Arden", "Dana", "Ellis", "Frankie", "Hollis", "Jules", "Emery", "Marlowe",
    "Oakley", "Remy",
)  # fmt: skip

LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Whitaker", "Holloway",
    "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez",
    "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright",
    "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall",
    "Rivera", "Campbell", "Mitchell", "Sullivan", "Roberts", "Gomez", "Phillips", "Evans",
    "Turner", "Diaz", "Fletcher", "Cruz", "Edwards", "Collins", "Reyes", "Stewart", "Morris",
    "Morales", "Murphy", "Cook", "Rogers", "Gutierrez", "Ortiz", "Lindqvist", "Cooper",
    "Peterson", "Novak", "Reed", "Kelly", "Howard", "Ramos", "Kim", "Cox", "Ward", "Richardson",
    "Watson", "Brooks", "Chavez", "Wood", "Okafor", "Bennett", "Mendoza", "Ruiz", "Hughes",
    "Price", "Alvarez", "Castillo", "Sanders", "Patel", "Myers", "Long", "Ross", "Foster",
    "Jimenez", "Kowalski",
)  # fmt: skip

CITIES = (
    "New York", "Los Angeles", "Chicago", "Houston", "Phoenix", "Philadelphia", "San Antonio",
    "San Diego", "Dallas", "San Jose", "Austin", "Jacksonville", "Columbus", "Charlotte",
    "Indianapolis", "Seattle", "Denver", "Boston", "Nashville", "Detroit", "Portland", "Memphis",
    "Louisville", "Baltimore", "Milwaukee", "Albuquerque", "Tucson", "Fresno", "Sacramento",
    "Atlanta", "Omaha", "Raleigh", "Miami", "Minneapolis", "Tulsa", "Cleveland", "Pittsburgh",
    "Cincinnati", "Honolulu", "Anchorage", "Toronto", "Vancouver", "Montreal", "London", "Paris",
    "Berlin", "Madrid", "Rome", "Amsterdam", "Dublin", "Vienna", "Prague", "Stockholm", "Oslo",
    "Copenhagen", "Helsinki", "Lisbon", "Athens", "Warsaw", "Budapest", "Tokyo", "Seoul",
    "Sydney", "Melbourne", "Auckland", "Mumbai", "Singapore", "Cape Town", "Buenos Aires",
    "Mexico City",
)  # fmt: skip

UNIVERSITIES = (
    "Massachusetts Institute of Technology", "Stanford University", "Harvard University",
    "Princeton University", "Yale University", "Columbia University", "University of Chicago",
    "University of Pennsylvania", "California Institute of Technology",
    "Johns Hopkins University", "Northwestern University", "Duke University", "Brown University",
    "Cornell University", "Rice University", "Vanderbilt University", "Dartmouth College",
    "Carnegie Mellon University", "Georgetown University", "Emory University",
    "University of California Berkeley", "University of California Los Angeles",
    "University of Michigan", "University of Virginia", "University of North Carolina",
    "University of Texas at Austin", "University of Washington", "University of Wisconsin",
    "University of Illinois", "Georgia Institute of Technology", "Purdue University",
    "Ohio State University", "Pennsylvania State University", "University of Florida",
    "Boston University", "New York University", "University of Southern California",
    "Tufts University", "University of Rochester", "Case Western Reserve University",
    "University of Toronto", "McGill University", "University of Oxford",
    "University of Cambridge", "Imperial College London", "ETH Zurich",
)  # fmt: skip

MAJORS = (
    "Computer Science", "Mathematics", "Physics", "Chemistry", "Biology", "Economics",
    "Psychology", "Sociology", "Philosophy", "History", "English Literature", "Political Science",
    "Mechanical Engineering", "Electrical Engineering", "Civil Engineering",
    "Chemical Engineering", "Aerospace Engineering", "Biomedical Engineering",
    "Materials Science", "Statistics", "Neuroscience", "Biochemistry", "Geology", "Astronomy",
    "Anthropology", "Linguistics", "Architecture", "Nursing", "Accounting", "Finance",
    "Marketing", "Business Administration", "Communications", "Journalism", "Music",
    "Art History", "Environmental Science", "Public Health", "Education",
    "International Relations", "Industrial Engineering", "Molecular Biology", "Data Science",
    "Urban Planning", "Film Studies",
)  # fmt: skip

#: (company, headquarters city). The employer determines ``employer_city``, as in bioS.
COMPANIES = (
    ("Apple", "Cupertino"), ("Microsoft", "Redmond"), ("Alphabet", "Mountain View"),
    ("Amazon", "Seattle"), ("Meta Platforms", "Menlo Park"), ("Intel", "Santa Clara"),
    ("Nvidia", "Santa Clara"), ("Cisco Systems", "San Jose"), ("Oracle", "Austin"),
    ("IBM", "Armonk"), ("Boeing", "Arlington"), ("General Electric", "Boston"),
    ("Ford Motor Company", "Dearborn"), ("General Motors", "Detroit"), ("Coca-Cola", "Atlanta"),
    ("PepsiCo", "Purchase"), ("Procter & Gamble", "Cincinnati"),
    ("Johnson & Johnson", "New Brunswick"), ("Pfizer", "New York"),
    ("Goldman Sachs", "New York"), ("JPMorgan Chase", "New York"),
    ("Bank of America", "Charlotte"), ("Wells Fargo", "San Francisco"),
    ("Salesforce", "San Francisco"), ("Uber", "San Francisco"), ("Tesla", "Austin"),
    ("Dell Technologies", "Round Rock"), ("Texas Instruments", "Dallas"),
    ("ConocoPhillips", "Houston"), ("Walmart", "Bentonville"), ("Target", "Minneapolis"),
    ("3M", "Saint Paul"), ("Deere & Company", "Moline"), ("Nike", "Beaverton"),
    ("Starbucks", "Seattle"), ("Costco", "Issaquah"), ("Home Depot", "Atlanta"),
    ("Delta Air Lines", "Atlanta"), ("FedEx", "Memphis"), ("Lockheed Martin", "Bethesda"),
    ("Qualcomm", "San Diego"), ("Adobe", "San Jose"), ("Netflix", "Los Gatos"),
    ("PayPal", "San Jose"), ("Visa", "San Francisco"), ("Mastercard", "Purchase"),
    ("Siemens", "Munich"), ("BMW", "Munich"), ("Volkswagen", "Wolfsburg"), ("SAP", "Walldorf"),
    ("Nestle", "Vevey"), ("Novartis", "Basel"), ("Roche", "Basel"), ("Unilever", "London"),
    ("HSBC", "London"), ("Toyota", "Toyota City"), ("Sony", "Tokyo"),
    ("Samsung Electronics", "Suwon"), ("Philips", "Amsterdam"), ("Airbus", "Toulouse"),
    ("Spotify", "Stockholm"), ("Ericsson", "Stockholm"), ("Nokia", "Espoo"),
    ("Shopify", "Ottawa"),
)  # fmt: skip

MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip

#: Attribute names, in the column order of the entity table.
ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "employer", "employer_city")
